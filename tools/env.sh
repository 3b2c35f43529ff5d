# Source me: process settings holoscan wants (a larger stack) and, where the CUDA runtime comes
# from the nvidia-cuda-runtime wheel, its library folder on LD_LIBRARY_PATH.
ulimit -s 32768 2>/dev/null || true
_cudart_dir=$(python3 - <<'PY' 2>/dev/null
import importlib.util, pathlib
spec = importlib.util.find_spec("nvidia")
if spec and spec.submodule_search_locations:
    for root in spec.submodule_search_locations:
        for lib in pathlib.Path(root).glob("**/libcudart.so.13*"):
            print(lib.parent); raise SystemExit
PY
)
if [ -n "${_cudart_dir:-}" ]; then export LD_LIBRARY_PATH="${_cudart_dir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
unset _cudart_dir
