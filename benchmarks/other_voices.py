"""Does the speech model hold on another synthesiser's voices?

The speech issue asks for WER <= 0.10 on digit sequences "from other synthesis paths with other
voices". The recipe trains on eSpeak NG only; this renders digit sequences with Flite (the CMU
synthesiser: diphone voices kal and kal16, the clustergen voices awb, rms and slt), as WAV files
at Flite's own rates, and transcribes them through `read_input` and `predict`, as `e2e predict`
does, with every finished end-to-end run given. `--staged` also refits the recipe's staged
recognisers once (seed 0, the full training split) and scores them on the same files.

    apt-get install flite       # the synthesiser, not a Python package
    python benchmarks/other_voices.py RUN [RUN ...] [--per-voice 12] [--seed 5] [--staged]

RUN: a finished `e2e train speech` folder or `e2e compare speech`'s OUT/end-to-end/seed-S.
Writes other_voices.json beside the first RUN: WER per voice and pipeline, and the counts of
substituted, deleted and inserted words.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from endtoend.data.speech import DIGITS
from endtoend.recipes import speech
from endtoend.recipes.contract import fit_staged
from endtoend.recipes.predict import load_trained

VOICES = ("kal", "kal16", "awb", "rms", "slt")


def render(folder: Path, per_voice: int, seed: int) -> list[tuple[str, Path, str]]:
    """(voice, wav, text) for `per_voice` random sequences of 1-7 digits per voice."""
    rng = np.random.default_rng(seed)
    items = []
    for voice in VOICES:
        for i in range(per_voice):
            text = " ".join(DIGITS[d] for d in rng.integers(0, 10, rng.integers(1, 8)))
            path = folder / f"{voice}-{i:03d}.wav"
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True,
                           capture_output=True)
            items.append((voice, path, text))
    return items


def wer_by_voice(hypotheses: list[str], items: list[tuple[str, Path, str]]) -> dict[str, float]:
    import jiwer
    out = {}
    for voice in (*VOICES, "all"):
        chosen = [(h, text) for h, (v, _, text) in zip(hypotheses, items) if voice in (v, "all")]
        out[voice] = jiwer.wer([t for _, t in chosen], [h or "<nothing>" for h, _ in chosen])
    measure = jiwer.process_words([text for _, _, text in items], [h or "<nothing>" for h in hypotheses])
    out["substitutions / deletions / insertions"] = [measure.substitutions, measure.deletions, measure.insertions]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--per-voice", type=int, default=12)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--staged", action="store_true", help="refit and score the staged recognisers too")
    args = parser.parse_args()
    if shutil.which("flite") is None:
        sys.exit("flite is not installed: apt-get install flite (or brew install flite), then run this again")
    with tempfile.TemporaryDirectory() as folder:
        items = render(Path(folder), args.per_voice, args.seed)
        waves = [speech.read_input(path) for _, path, _ in items]
    print(f"{len(items)} utterances, {args.per_voice} per Flite voice ({', '.join(VOICES)}), seed {args.seed}")
    padded = torch.zeros(len(waves), max(len(w) for w in waves), dtype=torch.int16)
    for i, wave in enumerate(waves):
        padded[i, :len(wave)] = wave
    results = {}
    for run in args.runs:
        recipe, model, _ = load_trained(run)
        model.eval()
        with torch.inference_mode():
            hypotheses = [str(p) for start in range(0, len(padded), 32)
                          for p in recipe.predict(model, padded[start:start + 32])]
        results[f"end-to-end {run}"] = wer_by_voice(hypotheses, items)
    if args.staged:
        splits = speech.load_data()
        for name, pipeline in speech.staged_pipelines(seed=0).items():
            print(f"fitting {name} (seed 0) ...", flush=True)
            fit_staged(pipeline, *splits.train)
            hypotheses = [str(p) for p in pipeline.predict(padded)]
            results[name] = wer_by_voice(hypotheses, items)
    print(f"{'pipeline':60s} " + " ".join(f"{v:>6s}" for v in (*VOICES, "all")))
    for name, scores in results.items():
        print(f"{name[:60]:60s} " + " ".join(f"{scores[v]:6.3f}" for v in (*VOICES, "all"))
              + "   sub/del/ins " + "/".join(map(str, scores["substitutions / deletions / insertions"])))
    out = args.runs[0] / "other_voices.json"
    out.write_text(json.dumps({"voices": VOICES, "per_voice": args.per_voice, "seed": args.seed,
                               "wer": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
