"""Test weights: real model classes with seeded random weights, saved in the real formats.

They let the CLAP and PANNs paths run end to end without the released checkpoints (tests,
``make demo``'s audio set). Every file carries the random-weights marker, so a run refuses it
unless ``--allow-random-weights`` is given. ``write_tiny_roberta`` makes a small local
RoBERTa folder (config.json, vocab.json, merges.txt) with a byte-level BPE trained on a few
sentences: CLAP's text tower has roberta-base's width (768) but one layer and a 300-token
vocabulary, so it builds in a second.

``python -m bst_search.extract.testing OUT`` writes ``OUT/panns-random.pth``,
``OUT/clap-random.pt`` (HTSAT-tiny, non-fusion) and ``OUT/roberta-tiny/``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bst_search.extract.backbones import BackboneOptions, Panns, write_random_clap

_CORPUS = [
    "Dog barking in the park, field recording", "Electric guitar chord, distorted",
    "Rain on a tin roof at night", "Door slam, wood, interior", "Synth pad, ambient drone",
    "Footsteps on gravel", "Glass breaking, smash", "Crowd cheering in a stadium",
    "Piano note C4 sustained", "Birds singing, morning, forest", "Car engine idle, diesel",
    "kick drum, snare, hi-hat loop 120 bpm", "voice, speech, male, english, reading",
]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in roberta-base


def write_tiny_roberta(folder: Path, vocab_size: int = 300) -> Path:
    """A RoBERTa config + tokenizer folder that ``RobertaTokenizer``/``RobertaConfig`` load."""
    from tokenizers import ByteLevelBPETokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(_CORPUS * 4, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=SPECIALS, show_progress=False)
    tok.save_model(str(folder))
    n = tok.get_vocab_size()
    config = {"architectures": ["RobertaModel"], "model_type": "roberta", "vocab_size": n,
              "hidden_size": 768, "num_hidden_layers": 1, "num_attention_heads": 12,
              "intermediate_size": 256, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 514,
              "type_vocab_size": 1, "initializer_range": 0.02, "layer_norm_eps": 1e-5,
              "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "RobertaTokenizer", "model_max_length": 512}))
    return folder


def write_test_weights(out: Path, seed: int = 0) -> dict[str, Path]:
    """The three files of the module docstring."""
    out = Path(out)
    text_dir = write_tiny_roberta(out / "roberta-tiny")
    opts = BackboneOptions(text_model_dir=text_dir, settings={"amodel": "HTSAT-tiny", "fusion": "false"})
    return {"panns": Panns.write_random_checkpoint(out / "panns-random.pth", seed, BackboneOptions()),
            "clap": write_random_clap(out / "clap-random.pt", seed, opts),
            "text_model_dir": text_dir}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for k, v in write_test_weights(Path(args.out), args.seed).items():
        print(f"{k:15s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
