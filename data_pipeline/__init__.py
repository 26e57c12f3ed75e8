"""Data: Grain sources and transforms, video decoding, tokenizer and chat template,
the QA data engine and the procedural scene generator."""
