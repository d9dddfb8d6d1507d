"""Byte-level BPE tokenizer directories shaped like those released MoE models ship (tests only: nothing can
be downloaded). Trained with the `tokenizers` library on the given texts and saved with a
tokenizer_config.json naming the transformers class, so AutoTokenizer loads them as it loads the real ones:
- "qwen2" (Qwen2, Qwen3, Qwen2-MoE, Qwen3-MoE): NFC, Qwen2's split regex, then bytes mapped without a regex;
  specials <|endoftext|> (eos and pad), <|im_start|>, <|im_end|>;
- "olmoe" (GPT-NeoX-20B's tokenizer): byte level with GPT-2's regex; specials <|endoftext|>, <|padding|>.
"""
import json
import os

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def build_bpe_tokenizer(directory, style, texts, vocab_size=1000):
    """Writes tokenizer.json and tokenizer_config.json of a `style` ("qwen2" or "olmoe") tokenizer with
    `vocab_size` ids trained on `texts` into the new `directory`; returns it."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    if style == "qwen2":  # Qwen2/Qwen3: split by the regex, then map bytes (no regex of its own)
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        config = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                  "bos_token": None, "unk_token": None, "model_max_length": 32768}
    elif style == "olmoe":  # OLMoE (GPT-NeoX-20B's tokenizer): byte level with GPT-2's regex
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
        specials = ["<|endoftext|>", "<|padding|>"]
        config = {"tokenizer_class": "GPTNeoXTokenizer", "eos_token": "<|endoftext|>", "pad_token": "<|padding|>",
                  "bos_token": "<|endoftext|>", "add_bos_token": False, "add_eos_token": False,
                  "model_max_length": 4096}
    else:
        raise ValueError(f"unknown tokenizer style {style!r}")
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    os.makedirs(directory)
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return directory
