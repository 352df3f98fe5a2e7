"""Tokenizers made offline from a synthetic vocabulary of the real size: letters and digits, then
filler pieces. Prompts tokenize into distinct ids, so different prompts give different images."""

import string

import transformers

_CHARS = list(string.ascii_lowercase + string.digits)


def clip_tokenizer(vocab_size: int, model_max_length: int):
    """A byte-pair tokenizer with no merges: every character is a token."""
    pieces = _CHARS + [c + "</w>" for c in _CHARS]
    pieces += [f"x{i}</w>" for i in range(vocab_size - 2 - len(pieces))]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    vocab["<|startoftext|>"] = vocab_size - 2
    vocab["<|endoftext|>"] = vocab_size - 1
    return transformers.CLIPTokenizer(
        vocab=vocab, merges=[], unk_token="<|endoftext|>", bos_token="<|startoftext|>",
        eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=model_max_length,
    )


def t5_tokenizer(vocab_size: int, model_max_length: int):
    """A unigram tokenizer: pad 0, eos 1, unk 2 as in T5, then characters and fillers."""
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    characters = [(piece, -1.0) for piece in ["\u2581"] + _CHARS + ["\u2581" + c for c in _CHARS]]
    # fillers score low, so prompts split into characters rather than into filler pieces
    fillers = [(f"\u2581w{i}", -10.0) for i in range(vocab_size - len(specials) - len(characters))]
    vocab = specials + characters + fillers
    return transformers.T5TokenizerFast(vocab=vocab, model_max_length=model_max_length, extra_ids=0)


# tokenizer class named in a recipe -> how to make it
MAKERS = {
    "CLIPTokenizer": clip_tokenizer,
    "CLIPTokenizerFast": clip_tokenizer,
    "T5TokenizerFast": t5_tokenizer,
    "T5Tokenizer": t5_tokenizer,
}
