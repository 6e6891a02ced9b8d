"""Command line: ``samlabel label|convert|validate|report|evaluate|review|finetune``. The only module that parses arguments or sets up logging."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

from pipeline.config import Settings
from pipeline.errors import SamlabelError
from pipeline.options import RUNTIMES

LOGGER = logging.getLogger("pipeline")


def _add_settings(parser: argparse.ArgumentParser, command: str) -> None:
    """One flag per ``Settings`` field that applies to ``command``; defaults come from the config."""
    for f in dataclasses.fields(Settings):
        meta = f.metadata
        if command not in meta["commands"]:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=f.name, action="store_const", const=True, default=None, help=meta["help"])
            continue
        kind = type(f.default) if isinstance(f.default, (int, float)) else str
        default = f.default if not isinstance(f.default, tuple) else ",".join(f.default)
        choices = f" ({'|'.join(meta['choices'])})" if meta.get("choices") else ""
        parser.add_argument(
            flag,
            dest=f.name,
            type=kind,
            default=None,
            metavar=f.name.upper(),
            help=f"{meta['help']}{choices}" + (f" [default: {default}]" if default is not None else ""),
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samlabel", description="Turn images or box datasets into YOLO-seg + COCO segmentation datasets."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bar")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("label", parents=[common], help="auto-label images: detector boxes -> SAM masks -> dataset")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image file, folder (recursive) or glob")
    _add_run_options(p, "label")

    p = sub.add_parser(
        "convert", parents=[common], help="box (or polygon) dataset -> segmentation dataset, boxes as SAM prompts"
    )
    p.add_argument(
        "src", metavar="SRC", help="data.yaml / YOLO folder / Roboflow YOLO or COCO export / COCO json / .zip of one"
    )
    p.add_argument("--images", metavar="DIR", help="image folder of a bare COCO json")
    p.add_argument("--names", metavar="A,B,C", help="class names of a bare images/ + labels/ pair (else classes.txt)")
    _add_run_options(p, "convert")

    p = sub.add_parser("validate", parents=[common], help="check a dataset's consistency; exit 1 on problems")
    p.add_argument("dir", metavar="DIR", help="dataset folder (data.yaml, <split>/images, labels, COCO files)")

    p = sub.add_parser("report", parents=[common], help="(re)build DIR/report.html, the picture report of a dataset")
    p.add_argument("dir", metavar="DIR", help="dataset folder written by samlabel (or any Roboflow-layout dataset)")

    p = sub.add_parser(
        "evaluate", parents=[common], help="masks and boxes of PRED against ground truth GT: AP, mask IoU, boundary IoU"
    )
    p.add_argument("pred", metavar="PRED", help="predicted dataset: samlabel output, COCO json, YOLO-seg / data.yaml")
    p.add_argument("--gt", required=True, metavar="GT", help="ground-truth dataset (any layout convert reads)")
    p.add_argument("--images", metavar="DIR", help="image folder of PRED when it is a bare COCO json")
    p.add_argument("--gt-images", metavar="DIR", help="image folder of GT when it is a bare COCO json")
    p.add_argument("--match-iou", type=float, default=0.5, help="mask IoU from which a prediction matches [0.5]")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")

    p = sub.add_parser(
        "review", parents=[common], help="fix masks in the browser with SAM clicks (a local web app; prints its URL)"
    )
    p.add_argument("dir", metavar="DIR", help="dataset folder written by samlabel label / convert")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on [127.0.0.1]; 0.0.0.0 opens it to the network"
    )
    p.add_argument("--port", type=int, default=8765, help="port [8765]; 0 = any free port (the printed URL has it)")
    p.add_argument(
        "--no-browser", action="store_true", help="do not open a browser (it opens only where there is a display)"
    )
    p.add_argument("--segmenter", metavar="W", help="SAM weights for clicks [the dataset's --segmenter]")
    p.add_argument(
        "--sam-arch", metavar="ARCH", help="SAM architecture when the file name does not say (mobile_sam ...)"
    )
    p.add_argument("--device", metavar="D", help="cpu, 0, cuda:0 ... [the dataset's --device]")
    p.add_argument("--runtime", choices=RUNTIMES, help="SAM runtime [the dataset's --runtime]")

    p = sub.add_parser(
        "finetune", parents=[common], help="fine-tune SAM's mask decoder on a dataset's own masks (after review)"
    )
    _add_finetune_options(p)
    return parser


def _add_finetune_options(p: argparse.ArgumentParser) -> None:
    from pipeline.finetune import FinetuneOptions

    p.add_argument("src", metavar="DATASET", help="a dataset with masks: samlabel output, data.yaml, COCO json ...")
    p.add_argument("--out", required=True, metavar="FILE", help="the fine-tuned checkpoint (.pt) to write")
    p.add_argument(
        "--segmenter", default="mobile_sam.pt", metavar="W", help="SAM weights to start from [mobile_sam.pt]"
    )
    p.add_argument("--sam-arch", metavar="ARCH", help="architecture of --segmenter when its file name does not say")
    p.add_argument("--images", metavar="DIR", help="image folder of a bare COCO json")
    p.add_argument("--names", metavar="A,B,C", help="class names of a bare images/ + labels/ pair")
    p.add_argument(
        "--reviewed-only", action="store_true", help="only the images checked in samlabel review (a samlabel dataset)"
    )
    p.add_argument("--device", metavar="D", help="cpu, cuda, cuda:1, 0 ... [the first GPU if any, else the CPU]")
    p.add_argument(
        "--cache-dir", metavar="DIR", help="image-embedding cache [$SAMLABEL_CACHE_DIR/embeddings, else the user cache]"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="start over when FILE holds another (or a finished) fine-tune"
    )
    for f in dataclasses.fields(FinetuneOptions):
        choices = f.metadata.get("choices")
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=type(f.default),
            default=None,
            choices=choices,
            metavar=None if choices else f.name.upper(),
            help=f"{f.metadata['help']} [default: {f.default}]",
        )


def _add_run_options(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write (resumed if unfinished)")
    p.add_argument("--config", metavar="FILE", help="YAML settings file (see configs/); flags override it")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset from a different run in DIR")
    p.add_argument(
        "--discard-reviews",
        action="store_true",
        help="with --overwrite: also replace images checked in samlabel review",
    )
    _add_settings(p, command)


def _settings_kwargs(args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name, None) for f in dataclasses.fields(Settings)}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``samlabel`` console command; returns the exit code."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="samlabel: %(message)s", stream=sys.stderr)
    try:
        if args.command == "label":
            from pipeline.api import label

            label(
                args.sources,
                args.out,
                config=args.config,
                overwrite=args.overwrite,
                discard_reviews=args.discard_reviews,
                progress=not args.quiet,
                **_settings_kwargs(args),
            )
        elif args.command == "convert":
            from pipeline.api import convert

            convert(
                args.src,
                args.out,
                images=args.images,
                names=args.names.split(",") if args.names else None,
                config=args.config,
                overwrite=args.overwrite,
                discard_reviews=args.discard_reviews,
                progress=not args.quiet,
                **_settings_kwargs(args),
            )
        elif args.command == "validate":
            return _validate(args.dir)
        elif args.command == "report":
            from pathlib import Path

            from pipeline.report import write_report_html
            from pipeline.review.store import complete_pending_save

            if Path(args.dir).is_dir():
                complete_pending_save(Path(args.dir))  # a review save a kill interrupted, before its files are read
            print(write_report_html(Path(args.dir)))
        elif args.command == "evaluate":
            return _evaluate(args)
        elif args.command == "review":
            from pipeline.review import serve

            serve(
                args.dir,
                host=args.host,
                port=args.port,
                open_browser=not args.no_browser,
                segmenter=args.segmenter,
                sam_arch=args.sam_arch,
                device=args.device,
                runtime=args.runtime,
                on_ready=lambda url: print(f"review: {url}", flush=True),
            )
        elif args.command == "finetune":
            return _finetune(args)
    except SamlabelError as e:
        print(f"samlabel: error: {e.cli_message}", file=sys.stderr)
        return _end(args, 2)
    except KeyboardInterrupt:
        print("samlabel: interrupted; run the same command again to resume", file=sys.stderr)
        return _end(args, 130)
    return _end(args, 0)


def _end(args: argparse.Namespace, code: int) -> int:
    """``code``; but a review stopped while SAM was still loading ends the process here, with ``os._exit``
    (the dataset is saved and closed by now): that thread cannot live through interpreter exit
    (``pipeline.review.server.sam_loading``)."""
    if args.command == "review" and "pipeline.review.server" in sys.modules:
        from pipeline.review.server import sam_loading

        if sam_loading():
            import os

            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return code


def _finetune(args: argparse.Namespace) -> int:
    from pipeline.finetune import FinetuneOptions, finetune, format_table

    result = finetune(
        args.src,
        args.out,
        segmenter=args.segmenter,
        arch=args.sam_arch,
        images=args.images,
        names=args.names.split(",") if args.names else None,
        reviewed_only=args.reviewed_only,
        device=args.device,
        cache_dir=args.cache_dir,
        overwrite=args.overwrite,
        progress=not args.quiet,
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneOptions)},
    )
    print(format_table(result))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from pipeline import fsio
    from pipeline.evaluate import evaluate, format_table

    result = evaluate(args.pred, args.gt, pred_images=args.images, gt_images=args.gt_images, match_iou=args.match_iou)
    print(format_table(result))
    if args.json:
        fsio.write_text(Path(args.json), json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    return 0


def _validate(directory: str) -> int:
    from pathlib import Path

    from pipeline.validate import validate

    if not Path(directory).is_dir():
        raise SamlabelError(f"{directory}: no such folder")
    problems = validate(directory)
    for problem in problems:
        print(problem)
    print(f"{directory}: {len(problems)} problem(s)" if problems else f"{directory}: OK", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
