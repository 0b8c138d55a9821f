"""llama-cpp-python with llama.cpp's weight repacking off, for the interop checks (import it before loading a model).

On CPUs with AMX (Sapphire Rapids and later) llama.cpp repacks Q4_K / Q6_K weights into its AMX buffer type and then
segfaults in ggml_backend_amx_mul_mat on the first evaluation (ggml-org/llama.cpp#20824; seen on 2026-12-05 with
llama-cpp-python 0.3.36 evaluating llama.cpp's own Q4_K_M file of the interop test). With `use_extra_bufts` off
llama.cpp runs its plain CPU kernels, which compute the same dequantized products: what these checks compare.
llama-cpp-python's Llama does not expose the model parameter, so its default-parameter factory is wrapped.
"""
import llama_cpp
import llama_cpp.llama_cpp as _lib

_default_model_params = _lib.llama_model_default_params


def _model_params_without_repack():
    params = _default_model_params()
    params.use_extra_bufts = False
    return params


_lib.llama_model_default_params = _model_params_without_repack
llama_cpp.llama_model_default_params = _model_params_without_repack
