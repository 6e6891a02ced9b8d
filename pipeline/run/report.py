"""The end of a run: data.yaml, the COCO files and report.json, assembled from the journal's records."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from pipeline import fsio, safepath
from pipeline.config import Settings
from pipeline.errors import SamlabelError
from pipeline.formats import coco, layout
from pipeline.formats.data_yaml import SPLITS, missing_note, to_data_yaml
from pipeline.quality import FLAGS, WRITTEN_SIGNALS, QualityThresholds
from pipeline.run.outputs import coco_annotations
from pipeline.run.state import Journal
from pipeline.types import ImageRecord, Instances

LOGGER = logging.getLogger(__name__)


@dataclass
class _Tally:
    """What the report needs of every image, gathered in one pass over the journal (no masks kept)."""

    names: Sequence[str]
    paths: layout.Layout
    offsets: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))
    per_class: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    skipped: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    review: list[dict] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)
    flag_counts: Counter = field(default_factory=Counter)
    class_flags: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    flagged: list[dict] = field(default_factory=list)
    reviewed: int = 0
    proposals: dict[str, int] = field(default_factory=dict)  # image path -> its proposals (images with any)
    #: ``low_score`` for records written without flags (the flags of the others were raised at this threshold).
    min_mask_score: float = QualityThresholds.min_mask_score

    def add(self, offset: int, r: ImageRecord) -> None:
        if r.status != "ok":
            self.skipped.append({"source": r.source, "reason": r.reason})
            return
        self.offsets[r.split].append((r.name, offset))
        self.reviewed += r.reviewed
        self.per_class[r.split].update(self.names[c] for c in r.instances.class_id)
        image = self.paths.image(r.split, r.name)
        self.dropped += [
            {"image": image, **describe(r.dropped, i, self.names), "reason": reason}
            for i, reason in enumerate(r.dropped_reasons)
        ]
        self.problems += [p.to_dict() for p in r.problems]
        if len(r.proposals):
            self.proposals[image] = len(r.proposals)
        inst = r.instances
        self._add_flags(image, inst)
        low = _low_score(inst, self.min_mask_score)
        self.review += [
            {
                "image": image,
                "class": self.names[int(inst.class_id[i])],
                "source_id": int(inst.source_id[i]),
                "mask_score": round(float(inst.mask_score[i]), 6),
            }
            for i in low
        ]

    def _add_flags(self, image: str, inst: Instances) -> None:
        """Count the flags of the instances in the label files and list the flagged ones."""
        flags = inst.extras.get("flags")
        if flags is None:
            return
        for i, fl in enumerate(flags):
            name = self.names[int(inst.class_id[i])]
            self.class_flags[name]["instances"] += 1
            if not fl:
                continue
            self.flag_counts.update(fl)
            self.class_flags[name].update(fl)
            self.class_flags[name]["flagged"] += 1
            entry = {"image": image, "source_id": int(inst.source_id[i]), "class": name, "flags": list(fl)}
            for key in (*WRITTEN_SIGNALS, "mask_score", "confidence"):
                value = (inst.extras[key] if key in inst.extras else getattr(inst, key))[i]
                if value is not None and not (isinstance(value, float | np.floating) and np.isnan(value)):
                    entry[key] = round(float(value), 6) if isinstance(value, float | np.floating) else int(value)
            self.flagged.append(entry)

    def quality(self, thresholds: dict) -> dict:
        """report.json's ``quality`` section."""
        flagged_total = sum(c["flagged"] for c in self.class_flags.values())
        return {
            "thresholds": thresholds,
            "instances_flagged": flagged_total,
            "flag_counts": {f: self.flag_counts[f] for f in FLAGS if self.flag_counts[f]},
            "per_class": {
                n: {k: self.class_flags[n][k] for k in ("instances", "flagged", *FLAGS) if self.class_flags[n][k]}
                for n in self.names
                if self.class_flags[n]["instances"]
            },
            "flagged": self.flagged,
        }


def _low_score(inst: Instances, min_mask_score: float) -> np.ndarray:
    """Indices of the instances flagged ``low_score`` (report.json's ``low_score_instances`` lists them)."""
    flags = inst.extras.get("flags")
    if flags is not None:
        return np.array([i for i, fl in enumerate(flags) if "low_score" in fl], dtype=np.int64)
    return np.flatnonzero(inst.mask_score < min_mask_score)  # as quality.flag: NaN (no SAM score) is never low


def describe(instances: Instances, i: int, names: Sequence[str]) -> dict:
    """An instance as report.json lists it: class name, source id, prompt box, scores where known."""
    c = int(instances.class_id[i])
    out: dict[str, object] = {"class": names[c] if 0 <= c < len(names) else c}
    out["source_id"] = int(instances.source_id[i])
    out["box_xyxy"] = [round(float(v), 2) for v in instances.xyxy[i]]
    for key in ("confidence", "mask_score"):
        value = float(getattr(instances, key)[i])
        if not np.isnan(value):
            out[key] = round(value, 6)
    if "flags" in instances.extras and instances.extras["flags"][i]:
        out["flags"] = list(instances.extras["flags"][i])
    return out


def finalize(out: Path, *, names, settings: Settings, state: dict, wanted: set[str], timings, prelude) -> dict:
    """Write data.yaml, the COCO files (when asked for) and report.json from the newest record of each image.

    Raises:
        SamlabelError: no image at all could be written (report.json is written first, with the reasons).
    """
    journal = Journal(out)
    newest: dict[str, tuple[int, ImageRecord]] = {}
    for offset, record in journal.records():
        if record.rel in wanted:
            newest[record.rel] = (offset, light(record))
    paths = layout.get(settings.layout)
    tally = tally_records(newest, names, paths, settings.thresholds)
    splits = [s for s in SPLITS if tally.offsets.get(s)]
    data_yaml = to_data_yaml(names, splits, paths.images_dir)
    with_yaml = bool(splits) and (paths.writes_data_yaml_always or "yolo" in settings.formats)
    if with_yaml:
        fsio.write_text(out / "data.yaml", yaml.safe_dump(data_yaml, sort_keys=False, allow_unicode=True))
    if "coco" in settings.formats:
        for split in splits:
            write_split_coco(out, split, names=names, tally=tally)
    report = {
        "command": state["command"],
        "names": list(names),
        "settings": state["settings"],
        **report_sections(tally, names=names, settings=settings, skipped_before=prelude.get("skipped_images", ())),
        **{k: v for k, v in prelude.items() if k != "skipped_images"},
        "timings": timings,
    }
    if tally.problems:  # what only the image files showed (sizes), after what reading the source showed
        report["source_problems"] = list(prelude.get("source_problems", [])) + tally.problems
    note = missing_note(data_yaml, splits) if with_yaml else None
    if note:
        report["data_yaml_note"] = note
        LOGGER.warning("%s", note)
    text = json.dumps(report, indent=2, ensure_ascii=False, default=str)
    fsio.write_text(out / "report.json", text + "\n")
    if splits:
        _write_html(out)
    if not splits:
        _log_skipped(out, report["skipped_images"])
        raise SamlabelError(
            f"no image could be written to {out}: all {len(report['skipped_images'])} were skipped "
            f"(reasons in {out / 'report.json'})"
        )
    return json.loads(text)


def _write_html(out: Path) -> None:
    """report.html beside report.json; a failure there is logged, never costs the finished dataset."""
    from pipeline.report import write_report_html

    try:
        write_report_html(out)
    except (OSError, ValueError, SamlabelError) as e:
        LOGGER.warning("report.html not written (%s); rebuild it with `samlabel report %s`", e, out)


def timings(this_run: dict, runs: list[dict]) -> dict:
    """report.json's ``timings``: ``total`` over the ``runs`` that made the dataset (each run's share, as
    ``state.add_run`` recorded it), ``this_run`` apart, and how many runs the total counts.

    Each part is ``{"seconds", "images", "images_per_second", "stage_seconds"}``; a re-run of a finished
    dataset is a ``this_run`` of 0 images and leaves ``total`` as it was.
    """
    stages: Counter = Counter()
    for r in runs:
        stages.update(r["stage_seconds"])
    total = {"seconds": sum(r["seconds"] for r in runs), "images": sum(r["images"] for r in runs)}
    return {"total": _timing(**total, stage_seconds=stages), "this_run": _timing(**this_run), "runs": len(runs)}


def _timing(*, seconds: float, images: int, stage_seconds: dict) -> dict:
    return {
        "seconds": round(seconds, 3),
        "images": images,
        "images_per_second": round(images / seconds, 3) if seconds > 0 and images else None,
        "stage_seconds": {k: round(v, 3) for k, v in sorted(stage_seconds.items())},
    }


def tally_records(
    newest: dict[str, tuple[int, ImageRecord]],
    names: Sequence[str],
    paths: layout.Layout = layout.ROBOFLOW,
    thresholds: QualityThresholds | None = None,
) -> _Tally:
    """What the report counts, from the newest record of each image (rel -> (journal offset, record)).

    ``thresholds``: the run's (``low_score`` of records written without flags); the defaults when omitted.
    """
    tally = _Tally(names, paths, min_mask_score=(thresholds or QualityThresholds()).min_mask_score)
    for _rel, (offset, record) in sorted(newest.items()):
        tally.add(offset, record)
    return tally


def report_sections(tally: _Tally, *, names: Sequence[str], settings: Settings, skipped_before=()) -> dict:
    """The parts of report.json that come from the records (the rest: command, settings, source, timings).

    ``skipped_before``: images skipped before any record was made (named in the source, not found), listed first.
    """
    splits = [s for s in SPLITS if tally.offsets.get(s)]
    per_class = tally.per_class
    sections = {
        "images": {s: len(tally.offsets[s]) for s in splits},
        "instances": {s: {n: per_class[s][n] for n in names if per_class[s][n]} for s in splits},
        "instances_total": sum(sum(c.values()) for c in per_class.values()),
        "reviewed_images": tally.reviewed,
        "skipped_images": [*skipped_before, *tally.skipped],  # named ones, then unreadable
        "dropped_instances": tally.dropped,
        "low_score_instances": {"below_mask_score": settings.thresholds.min_mask_score, "instances": tally.review},
        "quality": tally.quality(dataclasses.asdict(settings.thresholds)),
    }
    if settings.propose or tally.proposals:  # only then: reports of runs without --propose keep their form
        sections["proposals"] = {
            "total": sum(tally.proposals.values()),
            "images": dict(sorted(tally.proposals.items())),
        }
    return sections


def write_split_coco(out: Path, split: str, *, names: Sequence[str], tally: _Tally) -> None:
    """Write the split's COCO file (where the tally's layout puts it) from the journal records the tally points at."""
    coco.write_coco(
        safepath.inside(out, tally.paths.coco_file(split), what="COCO file"),
        names=names,
        images=_coco_images(Journal(out), sorted(tally.offsets[split])),
    )


def light(record: ImageRecord) -> ImageRecord:
    """The record without its segmentations and masks, which the report does not need (bounded memory)."""
    if record.status != "ok":
        return record
    from dataclasses import replace

    inst = record.instances.replace(masks=(None,) * len(record.instances))
    proposals = record.proposals.replace(masks=(None,) * len(record.proposals))
    return replace(record, instances=inst, segmentations=(None,) * len(inst), proposals=proposals)


def coco_image(record: ImageRecord) -> dict:
    """A record's COCO ``images`` entry (the writer adds ``id``); ``reviewed: true`` once checked in review."""
    assert record.hw is not None  # ImageRecord.__post_init__: a written image has its size
    image = {"file_name": record.name, "height": record.hw[0], "width": record.hw[1], "source": record.source}
    if record.reviewed:
        image["reviewed"] = True
    return image


def _coco_images(journal: Journal, entries: list[tuple[str, int]]) -> Iterator[tuple[dict, list[dict]]]:
    with open(journal.path, "rb") as f:
        for _name, offset in entries:
            r = journal.read_at(f, offset)
            yield coco_image(r), coco_annotations(r)


#: Up to this many skipped images are each named on the console at the end of a run; more are counted.
MAX_LISTED_SKIPS = 20


def log_summary(out: Path, report: dict) -> None:
    """The end of a run on the console: every skipped image (of this run or the earlier ones that made the
    dataset) on one line with its reason, or their count past ``MAX_LISTED_SKIPS``; then the totals."""
    t = report["timings"]
    skipped = report["skipped_images"]
    _log_skipped(out, skipped)
    LOGGER.info(
        "%s: %d images written %s, %d instances; %d images skipped (unreadable or unusable), "
        "%d instances without a usable mask (see report.json)%s",
        out,
        sum(report["images"].values()),
        dict(report["images"]),
        report["instances_total"],
        len(skipped),
        len(report["dropped_instances"]),
        f"; {t['this_run']['images_per_second']} images/s" if t["this_run"]["images_per_second"] else "",
    )
    p = report.get("proposals")
    if p and p["total"]:
        LOGGER.info(
            "%d proposals (masks no instance accounts for) in %d images: review them with `samlabel review %s`",
            p["total"],
            len(p["images"]),
            out,
        )
    elif p:
        LOGGER.info("0 proposals: an instance accounts for every mask the generator found")


def _log_skipped(out: Path, skipped: list[dict]) -> None:
    if len(skipped) <= MAX_LISTED_SKIPS:
        for s in skipped:
            LOGGER.warning("skipped %s", s["reason"])
    else:
        LOGGER.warning(
            "skipped %d images; each with its reason in %s (skipped_images)", len(skipped), out / "report.json"
        )
