"""Answers from a base model and its LoRA adapter, and how good they are.

    gguf.py      a .gguf file as a base model (converted once into a plain directory)
    chat.py      conversations and the chat template (shared with the trainer)
    engine.py    loading a model (+ adapter), batched greedy and streamed sampled answers
    metrics.py   exact match, token F1, ROUGE-L, chrF, length ratio, stop rate
    evaluate.py  base vs tuned answers on held-out conversations -> eval.jsonl, eval_summary.json;
                 --require gates
    quantization.py  the bitsandbytes settings of a QLoRA base, shared with the trainer

It runs inside the trainer on any host as well as in the CLI, so it imports only the
standard library, `brightrun_cli.errors` and `brightrun_cli.builtin` at module level;
torch, transformers, peft, rouge-score and sacrebleu are imported inside functions.
"""
