"""Command line for the safety classifier.

    python -m prompt.safety train --out model.bin [--data prompts.txt] [--eval held_out.txt] [fastText options]
    python -m prompt.safety classify --model model.bin "a prompt" ["another prompt" ...]
    python -m prompt.safety evaluate --model model.bin --data held_out.txt

``classify`` prints ``decision<TAB>unsafe score<TAB>prompt`` per prompt and exits 0 when all are
allowed, 1 when any is blocked, 3 when the classifier is unavailable (2 is argparse's usage error).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from prompt.safety.filter import DEFAULT_BLOCK_THRESHOLD, PromptSafetyFilter, SafetyDecision
from prompt.safety.train import (
    DEFAULT_DATA_PATH,
    EvalReport,
    TrainingError,
    TrainOptions,
    evaluate,
    read_labelled,
    train_classifier,
)

EXIT_BLOCKED = 1
EXIT_UNAVAILABLE = 3
_DEFAULTS = TrainOptions()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prompt.safety", description="Prompt safety classifier (fastText).")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a classifier from a labelled prompt file")
    train.add_argument("--data", default=str(DEFAULT_DATA_PATH), help="labelled prompts (default: the shipped file)")
    train.add_argument("--out", required=True, help="where to write the model (.bin)")
    train.add_argument("--eval", dest="eval_path", help="a held-out labelled file to report accuracy on")
    train.add_argument("--epoch", type=int, default=_DEFAULTS.epoch)
    train.add_argument("--lr", type=float, default=_DEFAULTS.lr, help="learning rate (too high diverges to NaN)")
    train.add_argument("--dim", type=int, default=_DEFAULTS.dim)
    train.add_argument("--word-ngrams", type=int, default=_DEFAULTS.word_ngrams)
    train.add_argument("--minn", type=int, default=_DEFAULTS.minn, help="shortest character n-gram (0: none)")
    train.add_argument("--maxn", type=int, default=_DEFAULTS.maxn, help="longest character n-gram (0: none)")
    train.add_argument("--bucket", type=int, default=_DEFAULTS.bucket, help="hashed n-gram rows")
    train.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    train.add_argument("--threads", type=int, default=_DEFAULTS.threads, help="more than 1 is not reproducible")

    classify = sub.add_parser("classify", help="classify prompts with a trained model")
    classify.add_argument("--model", required=True)
    classify.add_argument("--threshold", type=float, default=DEFAULT_BLOCK_THRESHOLD)
    classify.add_argument("prompts", nargs="+")

    ev = sub.add_parser("evaluate", help="accuracy of a trained model on a labelled file")
    ev.add_argument("--model", required=True)
    ev.add_argument("--data", required=True)
    ev.add_argument("--threshold", type=float, default=DEFAULT_BLOCK_THRESHOLD)
    return parser


def _print_eval(report: EvalReport) -> None:
    print(f"accuracy {report.accuracy:.3f} ({report.correct}/{report.total})")
    for example, score in report.errors:
        shown = "n/a" if score is None else f"{score:.3f}"
        print(f"  wrong: expected {example.label}, unsafe score {shown}: {example.text}")


def _train(args: argparse.Namespace) -> int:
    options = TrainOptions(
        epoch=args.epoch,
        lr=args.lr,
        dim=args.dim,
        word_ngrams=args.word_ngrams,
        minn=args.minn,
        maxn=args.maxn,
        bucket=args.bucket,
        seed=args.seed,
        threads=args.threads,
    )
    report = train_classifier(args.data, args.out, options)
    counts = ", ".join(f"{label} {n}" for label, n in sorted(report.label_counts.items()))
    print(f"trained on {report.examples} examples ({counts}) in {report.seconds:.2f} s -> {report.out_path}")
    if args.eval_path:
        _print_eval(evaluate(PromptSafetyFilter(classifier_path=report.out_path), read_labelled(args.eval_path)))
    return 0


def _classify(args: argparse.Namespace) -> int:
    filter_ = PromptSafetyFilter(classifier_path=args.model, block_threshold=args.threshold)
    status = 0
    for prompt in args.prompts:
        result = filter_.classify(prompt)
        if result.decision is SafetyDecision.UNAVAILABLE:
            print(f"unavailable\t-\t{result.reason}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        print(f"{result.decision.value}\t{result.unsafe_score:.3f}\t{prompt}")
        if result.blocked:
            status = EXIT_BLOCKED
    return status


def _evaluate(args: argparse.Namespace) -> int:
    filter_ = PromptSafetyFilter(classifier_path=args.model, block_threshold=args.threshold)
    _print_eval(evaluate(filter_, read_labelled(args.data)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "classify":
            return _classify(args)
        return _evaluate(args)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
