#!/usr/bin/env bash
# Create the peers' virtual environments for benchmarks/peers.py, one per peer:
#   benchmarks/.peers/dlib       dlib (prebuilt wheel) + its 68-point model (face_recognition_models)
#   benchmarks/.peers/mediapipe  MediaPipe Face Mesh
#   bash benchmarks/setup_peers.sh                 # both
#   bash benchmarks/setup_peers.sh mediapipe       # one of them
# Neither peer is a dependency of fkd-jax nor in uv.lock: mediapipe 0.10.21 pins numpy < 2 and
# protobuf < 5, which fkd-jax's environment cannot share. 0.10.21 is the last release whose wheel
# ships its face models and still has `mp.solutions`. face_recognition_models is a ~100 MB
# source package; benchmarks/peer_landmarks.py finds its model file without importing it (its
# __init__ needs setuptools' pkg_resources, gone from recent setuptools). Safe to rerun: an
# existing environment is kept and only what is missing is installed. PYTHON picks the
# interpreter (default 3.11; mediapipe 0.10.21 has wheels for 3.9-3.12).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-3.11}"
peers=("$@")
[[ ${#peers[@]} -gt 0 ]] || peers=(dlib mediapipe)

for peer in "${peers[@]}"; do
  case "$peer" in
    dlib)
      packages=("dlib-bin==20.0.1.post1" "face_recognition_models==0.3.0" "numpy==2.4.6"
                "Pillow==13.0.0" "absl-py==2.5.1")
      check="import dlib; print('dlib', dlib.__version__)" ;;
    mediapipe)
      packages=("mediapipe==0.10.21" "numpy==1.26.4" "protobuf==4.25.9" "Pillow==13.0.0"
                "absl-py==2.5.1")
      check="import mediapipe as mp; mp.solutions.face_mesh; print('mediapipe', mp.__version__)" ;;
    *)
      echo "error: unknown peer '$peer' (dlib or mediapipe)" >&2
      exit 2 ;;
  esac
  venv="$here/.peers/$peer"
  if [[ ! -x "$venv/bin/python" ]]; then
    uv venv --quiet --python "$python" "$venv"
  fi
  uv pip install --quiet --python "$venv/bin/python" "${packages[@]}"
  "$venv/bin/python" -c "$check"
done
