"""Run settings: one frozen dataclass, loaded from YAML and overridden by keyword arguments or flags.

Every field carries its help text and the commands it applies to, so the CLI is generated from this
class and cannot drift from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.concepts.ontology import Ontology, parse_optional
from pipeline.errors import SamlabelError
from pipeline.options import (
    COCO_MASKS,
    ENGINES,
    FORMATS,
    LAYOUTS,
    MODES,
    MULTIMASK,
    RUNTIMES,
    CocoMasks,
    Engine,
    Format,
    Layout,
    Mode,
    Multimask,
    Runtime,
)
from pipeline.quality import FLAGS, QualityThresholds
from pipeline.sources import parse_split

LABEL, CONVERT = "label", "convert"
BOTH = (LABEL, CONVERT)


def _opt(default: Any, help: str, commands: tuple[str, ...] = BOTH, choices: tuple | None = None) -> Any:
    return field(default=default, metadata={"help": help, "commands": commands, "choices": choices})


#: The help of --layout (long: kept out of the field list below).
LAYOUT_HELP = (
    "dataset layout: roboflow (<split>/images, labels, _annotations.coco.json) or coco "
    "(annotations/instances_<split>.json, images/<split>/)"
)


@dataclass(frozen=True)
class GeneratorOptions:
    """The parameters of SAM's automatic mask generator (``pipeline.sam.automatic``: ``--mode everything``);
    the defaults are segment-anything's ``SamAutomaticMaskGenerator``'s, and why each is what it is.

    Attributes:
        points_per_side: the point grid is ``points_per_side`` x ``points_per_side`` over the image (32: SA-1B's
            fully automatic stage; 1,024 prompts, the decoder's cost, so the image's time, grows with its square).
        points_per_batch: points decoded and post-processed together (bounds the logits held: 64 points x 3
            candidates x 256 x 256 float32 = 50 MB).
        pred_iou_thresh: keep candidates whose predicted IoU is above this (0.88: SAM's own quality estimate,
            strict, since thousands of unprompted candidates compete for each object).
        stability_thresh: keep candidates whose stability score is at least this (0.95: masks that barely move
            when the logit threshold moves by ``stability_offset``; a grid point on a boundary gives unstable ones).
        stability_offset: the logit offset of the stability score (1.0, segment-anything's).
        box_nms_thresh: box IoU above which the lower-scored of two masks of a crop is dropped (0.7: the grid
            finds each object from many points; lower merges neighbouring objects).
        crop_layers: zoomed-in crop layers (0: none; layer ``k`` has ``2**k`` x ``2**k`` overlapping crops, each
            encoded and prompted with its own grid: small objects for ``4**k`` times the encoder's work).
        crop_nms_thresh: box IoU above which a mask of a larger crop gives way to one of a smaller crop (0.7).
        crop_overlap_ratio: crops overlap by this share of the image's short side at layer 1 (512 / 1500),
            halved per layer.
        crop_points_downscale: layer ``k`` has ``points_per_side / crop_points_downscale**k`` points per side (1).
        min_region_area: remove holes and islands of fewer pixels than this from each mask (0: off; it costs a
            connected-components pass per mask).
        skip_covered: skip grid points inside ``covered`` instances' masks (see the module doc).
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_thresh: float = 0.95
    stability_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_points_downscale: int = 1
    min_region_area: int = 0
    skip_covered: bool = True

    def __post_init__(self) -> None:
        ints = {"points_per_side": 1, "points_per_batch": 1, "crop_layers": 0, "crop_points_downscale": 1}
        for name, low in {**ints, "min_region_area": 0}.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        for name in ("pred_iou_thresh", "stability_thresh", "box_nms_thresh", "crop_nms_thresh", "crop_overlap_ratio"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
        if not self.stability_offset > 0:
            raise ValueError(f"stability_offset: expected a logit offset > 0, got {self.stability_offset!r}")
        if self.points_per_side // self.crop_points_downscale**self.crop_layers < 1:
            raise ValueError(
                f"crop layer {self.crop_layers} gets no points: points_per_side {self.points_per_side} / "
                f"crop_points_downscale {self.crop_points_downscale}**{self.crop_layers} < 1"
            )

    def replace(self, **changes) -> GeneratorOptions:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Settings:
    """Everything a run can be told; defaults are the product's defaults."""

    detector: str = _opt("yolov8n.pt", "Ultralytics detector weights: a path or a name that auto-downloads", (LABEL,))
    segmenter: str = _opt(
        "mobile_sam.pt",
        "SAM weights (sam_b/l/h, mobile_sam, sam2[.1]_t/s/b/l): a path or a name that auto-downloads",
    )
    classes: tuple[str, ...] | None = _opt(
        None,
        "comma-separated class names: a YOLO-World vocabulary, else a filter on the detector's names",
        (LABEL,),
    )
    prompts: Ontology | None = _opt(
        None,
        "classes by text, for --detector sam3.pt, YOLOE or YOLO-World: 'person, bicycle'; several phrases per class "
        "'person: man, woman; bike: bicycle'; a phrase's own threshold 'helmet@0.6' (see README)",
        (LABEL,),
    )
    exemplars: str | None = _opt(
        None,
        "a COCO json (images beside it) or YOLO folder of a few images with boxes of wanted objects, classes by "
        "name: SAM 3 finds more like them",
        (LABEL,),
    )
    conf: float = _opt(0.25, "detector confidence threshold", (LABEL,))
    iou: float = _opt(0.7, "detector NMS IoU threshold", (LABEL,))
    max_det: int = _opt(300, "maximum detections per image", (LABEL,))
    imgsz: int = _opt(640, "detector input size", (LABEL,))
    device: str | None = _opt(None, "cpu, 0, cuda:0 ... (default: first GPU if any, else CPU)")
    split: str = _opt("train=0.8,valid=0.2", "split fractions, assigned per file by a hash of its path", (LABEL,))
    layout: Layout = _opt("roboflow", LAYOUT_HELP, choices=LAYOUTS)
    # None stands for the layout's own formats; __post_init__ puts them in, so a Settings always has a tuple
    formats: tuple[Format, ...] = _opt(
        None,
        "comma-separated output formats; default yolo,coco (coco alone with --layout coco)",
        choices=FORMATS,
    )
    coco_masks: CocoMasks = _opt("polygon", "COCO segmentation encoding", choices=COCO_MASKS)
    simplify: float = _opt(
        0.24,
        "polygon simplification tolerance in pixels (below 0.25 the polygons rasterize to the exact mask)",
    )
    sam_arch: str | None = _opt(
        None,
        "SAM architecture of --segmenter (sam_b/l/h, mobile_sam, sam2_t/s/b/l, sam2.1_t/s/b/l, medsam, "
        "sam_hq_vit_b/l/h/tiny), for a file whose name does not say it (a fine-tuned my_sam.pt); default: from the file name",
    )
    cache_dir: str | None = _opt(
        None,
        "folder for the exported ONNX runtimes, keyed by the weights' hash (default: $SAMLABEL_CACHE_DIR, else the "
        "user cache folder); the weights' own folder may be read-only",
    )
    sam_batch: int = _opt(
        0, "boxes per SAM decoder call; 0 = auto (8 with the ONNX box decoder, 4 with PyTorch on CPU, 32 on GPU)"
    )
    runtime: Runtime = _opt(
        "auto",
        "SAM image-encoder runtime; auto = ONNX Runtime on CPU once it passes a check against PyTorch",
        choices=RUNTIMES,
    )
    link: bool = _opt(
        False, "hard-link images into the dataset (symlink across file systems) instead of copying", (CONVERT,)
    )
    resegment: bool = _opt(False, "send objects that already have a polygon or RLE to SAM too", (CONVERT,))
    keep_unlabeled: bool = _opt(False, "keep images without a label file (as images without objects)", (CONVERT,))
    multimask: Multimask = _opt(
        "off",
        "ask SAM for 3 candidate masks per box and keep the best predicted IoU (score) or the one whose box "
        "fits the prompt box best (box-fit); off = one mask",
        choices=MULTIMASK,
    )
    drop_flags: tuple[str, ...] = _opt(
        (), "comma-separated quality flags whose instances are left out of the label files (listed in report.json)"
    )
    thresholds: QualityThresholds = _opt(
        QualityThresholds(),
        "quality flag thresholds to change, e.g. 'min_mask_score=0.6,max_outside_box=0.2' (see README)",
    )
    engine: Engine = _opt(
        "local",
        'where the models run: local (this process) or ray (a Ray cluster; pip install "samlabel[ray]")',
        choices=ENGINES,
    )
    ray_address: str | None = _opt(
        None, "Ray cluster to join (auto, HOST:6379, ray://HOST:10001); default: RAY_ADDRESS, else a local Ray"
    )
    ray_actors: int = _opt(0, "model replicas on Ray; 0 = auto (one per GPU share, or cluster CPUs / model threads)")
    ray_gpus_per_actor: float = _opt(0.0, "GPUs per model replica on Ray (0.5 = two per GPU); 0 = replicas on CPU")
    propose: bool = _opt(
        False,
        "also run SAM's automatic mask generator and keep the masks that overlap no instance as proposals (what "
        "the detector or the annotators missed): listed in report.json and shown in review, never in the label files",
    )
    propose_iou: float = _opt(
        0.5, "a generated mask whose IoU with an instance reaches this is that instance, not a proposal (--propose)"
    )
    # --mode everything and --propose: SAM's automatic mask generator (pipeline.sam.automatic); defaults are
    # segment-anything's.
    mode: Mode = _opt(
        "detect",
        "detect: detector boxes prompt SAM; everything: a grid of point prompts finds every object (one class, --name)",
        (LABEL,),
        choices=MODES,
    )
    points_per_side: int = _opt(
        32,
        "everything mode and --propose: points per side of the prompt grid (32 x 32 = 1,024 prompts, SA-1B's automatic stage; "
        "time grows with its square)",
        BOTH,
    )
    pred_iou_thresh: float = _opt(
        0.88,
        "everything mode and --propose: keep masks whose SAM-predicted IoU is above this (strict: thousands of unprompted "
        "candidates compete for each object)",
        BOTH,
    )
    stability_thresh: float = _opt(
        0.95,
        "everything mode and --propose: keep masks whose stability (IoU of the mask at logit +1 and -1) is at least this",
        BOTH,
    )
    box_nms_thresh: float = _opt(
        0.7,
        "everything mode and --propose: box IoU above which the lower-scored of two masks is dropped (duplicates)",
        BOTH,
    )
    crop_layers: int = _opt(
        0,
        "everything mode and --propose: zoomed-in crop layers for small objects (layer k: 2^k x 2^k crops, each encoded and "
        "prompted again); 0 = none",
        BOTH,
    )
    min_region_area: int = _opt(
        0,
        "everything mode and --propose: remove holes and islands smaller than this many pixels from each mask; 0 = off",
        BOTH,
    )
    name: str = _opt("object", "everything mode: the class name of every mask", (LABEL,))

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("classes", "formats", "drop_flags"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            set_(self, name, tuple(value) if value is not None else None)
        if self.classes == ():
            set_(self, "classes", None)
        given: object = self.multimask  # as given: YAML reads an unquoted `off` as false
        if given is False:
            set_(self, "multimask", "off")
        for name in ("layout", "coco_masks", "runtime", "engine", "multimask", "mode"):
            choices = Settings.__dataclass_fields__[name].metadata["choices"]
            if getattr(self, name) not in choices:
                raise SamlabelError(f"{name}: expected one of {list(choices)}, got {getattr(self, name)!r}")
        if self.formats is None:  # the layout's own: COCO tooling wants no YOLO files unless asked for
            set_(self, "formats", FORMATS if self.layout == "roboflow" else ("coco",))
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise SamlabelError(f"formats: expected a non-empty subset of {list(FORMATS)}, got {list(self.formats)}")
        if not 0 <= self.conf <= 1 or not 0 <= self.iou <= 1:
            raise SamlabelError(f"conf and iou must lie in [0, 1], got conf={self.conf} iou={self.iou}")
        if self.max_det < 1 or self.imgsz < 32 or self.sam_batch < 0:
            raise SamlabelError("max_det must be >= 1, sam_batch >= 0 (0 = auto) and imgsz >= 32")
        if self.simplify < 0:
            raise SamlabelError(f"simplify must be >= 0 pixels, got {self.simplify}")
        if not 0 < self.propose_iou <= 1:
            raise SamlabelError(f"propose_iou must lie in (0, 1], got {self.propose_iou}")
        if self.ray_actors < 0 or self.ray_gpus_per_actor < 0:
            raise SamlabelError("ray_actors (0 = auto) and ray_gpus_per_actor (0 = CPU) must be >= 0")
        if self.device is not None:
            set_(self, "device", str(self.device))
        unknown = [f for f in self.drop_flags if f not in FLAGS]
        if unknown:
            raise SamlabelError(f"drop_flags: unknown flag(s) {unknown}; the flags are {list(FLAGS)}")
        set_(self, "prompts", parse_optional(self.prompts))  # a text (CLI, state.json), list or mapping (YAML)
        if self.exemplars is not None:
            set_(self, "exemplars", str(self.exemplars))
        try:  # parsed once: a "name=number,..." string (CLI, state.json) or a mapping (YAML)
            set_(self, "thresholds", QualityThresholds.parse(self.thresholds))
        except ValueError as e:
            raise SamlabelError(str(e)) from None
        self._check_generator()
        parse_split(self.split)  # validates

    def _check_generator(self) -> None:
        """The generator's settings (``--mode everything``) as ``GeneratorOptions`` checks them."""
        if not isinstance(self.name, str) or not self.name.strip() or any(c in self.name for c in "\n\r\t"):
            raise SamlabelError(f"name: expected a class name (one line, not empty), got {self.name!r}")
        try:
            generator_options(self)
        except ValueError as e:
            raise SamlabelError(str(e)) from None

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON-ready values (state.json, the resume fingerprint): ``thresholds`` as its text."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["thresholds"] = str(self.thresholds)
        out["prompts"] = None if self.prompts is None else str(self.prompts)
        return out

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)


def generator_options(settings: Settings) -> GeneratorOptions:
    """The ``pipeline.sam.automatic.GeneratorOptions`` of ``settings`` (the generator's other parameters keep
    segment-anything's defaults).

    Raises:
        ValueError: a value out of range (the message names the setting).
    """
    s = settings
    return GeneratorOptions(
        points_per_side=s.points_per_side,
        pred_iou_thresh=s.pred_iou_thresh,
        stability_thresh=s.stability_thresh,
        box_nms_thresh=s.box_nms_thresh,
        crop_layers=s.crop_layers,
        min_region_area=s.min_region_area,
    )


def field_names() -> tuple[str, ...]:
    """Names of all settings."""
    return tuple(f.name for f in dataclasses.fields(Settings))


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from defaults, then a YAML file, then ``overrides`` (``None`` values are ignored).

    Keys may use ``-`` or ``_``. Unknown keys are refused with the list of known ones.

    Raises:
        SamlabelError: unreadable file, not a mapping, unknown keys or invalid values.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise SamlabelError(f"config {path}: cannot read it ({e})") from e
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise SamlabelError(f"config {path}: expected a mapping of setting: value, got {type(data).__name__}")
        values.update({str(k).replace("-", "_"): v for k, v in data.items()})
    values.update({k.replace("-", "_"): v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - set(field_names()))
    if unknown:
        source = f"config {path}" if path else "settings"
        raise SamlabelError(f"{source}: unknown key(s) {unknown}; known keys are {list(field_names())}")
    try:
        return Settings(**values)
    except TypeError as e:
        raise SamlabelError(f"settings: {e}") from e
