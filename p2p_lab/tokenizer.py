"""A CLIP-convention BPE tokenizer for the shapes world, built from files this project writes.

Taught in notebook 04 (the prompt model). CLIP's conventions are kept: byte-level alphabet,
word-end marker ``</w>``, ``<|startoftext|>`` / ``<|endoftext|>``, padding with the end token to a
fixed length. One word (:data:`SPLIT_WORD`) deliberately keeps two tokens, so the course can teach
words that become several tokens, as many do in Stable Diffusion's tokenizer.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import shapes

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SPLIT_WORD = "turquoise"
MAX_LENGTH = 16  # tokens per prompt, start and end tokens included


def world_words() -> list[str]:
    return ["a", "on", "and", "background", *shapes.SIZES, *shapes.OBJECT_STYLES, *shapes.BACKGROUND_STYLES,
            *shapes.COLORS, *shapes.SHAPES]


def write_bpe_files(folder: str | Path, words: list[str] | None = None,
                    split_words: tuple[str, ...] = (SPLIT_WORD,)) -> tuple[Path, Path]:
    """Train a BPE on ``words`` (default: the world's words), drop the last merge of each of
    ``split_words`` (so each stays two tokens), write vocab.json + merges.txt."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    words = world_words() if words is None else list(dict.fromkeys(words))
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=max(1000, 400 + 12 * len(words)), min_frequency=1,
                                  special_tokens=[BOS, EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator(words, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    split = {w + "</w>" for w in split_words}
    merges = [m for m in merges if m.replace(" ", "") not in split]  # each split word: two pieces
    # Ids in a fixed order (the trainer's own ids vary from run to run): the byte alphabet, the
    # word-final single characters, each merge's result in merge order, then the special tokens.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    finals = sorted(t for t in model["vocab"] if t.endswith("</w>") and len(t) == 5)
    vocab = list(dict.fromkeys(alphabet + finals + [m.replace(" ", "") for m in merges]))
    vocab += [BOS, EOS]  # CLIP keeps the two special tokens last
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    # the class named, so that transformers does not guess it from the folder's name (a temporary
    # folder called ".../tmpcpm..." loaded as a CPM tokenizer's, with a warning)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer"}))
    return folder / "vocab.json", folder / "merges.txt"


def build_tokenizer(folder: str | Path, words: list[str] | None = None,
                    split_words: tuple[str, ...] = (SPLIT_WORD,), max_length: int = MAX_LENGTH):
    """A ``transformers.CLIPTokenizer`` from freshly written BPE files in ``folder``."""
    from transformers import CLIPTokenizer

    write_bpe_files(folder, words, split_words)
    return CLIPTokenizer.from_pretrained(str(folder), bos_token=BOS, eos_token=EOS, pad_token=EOS,
                                         unk_token=EOS, model_max_length=max_length)


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """``tokenizer.save_pretrained(folder)`` plus the ``vocab.json`` and ``merges.txt`` of its BPE.

    transformers 5 writes only ``tokenizer.json``; transformers 4 loads a ``CLIPTokenizer`` from
    the two BPE files, so a pipeline folder carries both and loads with either.
    """
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"]))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
