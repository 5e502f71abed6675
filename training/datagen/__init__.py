"""The bundled synthetic corpus: a deterministic generator of pretrain, SFT, DPO and held-out eval data.

`generate_corpus(out_dir, seed=0, scale=1.0)` writes the files; `iter_texts(out_dir)` yields their texts;
`python -m training.datagen --out DIR` is the command line. The modules are split by content kind (identity,
arithmetic, tools, small talk, preference pairs, pretrain documents). Nothing here trains or tokenizes.
"""

from training.datagen.corpus import BASE_COUNTS, generate_corpus, iter_texts, source_digest
from training.datagen.schema_check import arguments_valid, schema_errors

__all__ = ["BASE_COUNTS", "arguments_valid", "generate_corpus", "iter_texts", "schema_errors", "source_digest"]
