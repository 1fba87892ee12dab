"""llama.cpp's side of the logits test (tests/llamacpp.rs): loads a GGUF with llama-cpp-python
and prints, as JSON, the next-token logits after the prompt and after each further token.

The KV cache is kept in f32 (llama.cpp's default is f16), so the comparison measures the forward
pass, not a storage choice.
"""
import json
import sys

import numpy as np
from llama_cpp import GGML_TYPE_F32, Llama

model, prompt, more = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
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
