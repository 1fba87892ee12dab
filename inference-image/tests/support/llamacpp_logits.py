"""llama.cpp's side of the logits test (tests/llamacpp.rs): loads a GGUF with llama-cpp-python
and prints, as JSON, the next-token logits after the prompt and after each further token.

The KV cache is kept in f32 (llama.cpp's default is f16), so the comparison measures the forward
pass, not a storage choice.

With `--no-repack` after the token lists, llama.cpp keeps the weights as the file has them: by
default it repacks q4_K weights for its interleaved kernels, a second way it computes the same
products (llama-cpp-python has no argument for it, so its default model parameters are wrapped).
"""
import json
import sys

import llama_cpp.llama_cpp as low_level
import numpy as np
from llama_cpp import GGML_TYPE_F32, Llama

model, prompt, more = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
if "--no-repack" in sys.argv[4:]:
    defaults = low_level.llama_model_default_params

    def without_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params

    low_level.llama_model_default_params = without_repacking
llm = Llama(model_path=model, n_ctx=256, n_batch=256, n_threads=2, type_k=GGML_TYPE_F32,
            type_v=GGML_TYPE_F32, verbose=False)


def last_logits():
    # llm.scores stays zero unless every position's logits are kept (logits_all): read the
    # context's own buffer for the last position instead.
    return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).tolist()


out = []
llm.eval(prompt)
out.append(last_logits())
for token in more:
    llm.eval([token])
    out.append(last_logits())
print(json.dumps(out))
