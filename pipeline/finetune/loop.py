"""The training loop: one epoch of iterative prompting, validation with ``samlabel evaluate``'s matching.

One training step takes ``batch`` objects. Each object is prompted as SAM was trained: its box
(edges jittered), then ``clicks`` rounds that add one corrective click sampled from the previous
prediction's error and feed that prediction's low-res logits back as the mask input. The loss of
every round counts (averaged over rounds and objects); the previous prediction is detached, so each
round's backward pass is taken as soon as it is computed and memory holds one round at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

from pipeline.evaluate import match_instances
from pipeline.finetune.data import EmbeddingCache, Sample
from pipeline.finetune.loss import sam_loss
from pipeline.finetune.model import Features, TrainableSam, autocast
from pipeline.finetune.options import FinetuneOptions
from pipeline.finetune.prompts import jitter_boxes, sample_clicks
from pipeline.masks import full_rle
from pipeline.sam.prompts import LOWRES, SAM_INPUT
from pipeline.sam.upsample import Upsampler
from pipeline.types import CropMask, Instances

#: Optimizer steps of linear learning-rate warm-up.
WARMUP_STEPS = 50
#: The cosine schedule ends at this fraction of the learning rate.
FINAL_LR_FRACTION = 0.1
_CELL = SAM_INPUT // LOWRES


def epoch_batches(samples: Sequence[Sample], batch: int, rng: np.random.Generator) -> list[list[tuple[int, int]]]:
    """One epoch's batches of (sample index, object index): images shuffled, then their objects.

    An image's objects stay together, so each embedding is read once per epoch and a batch spans
    about ``batch / objects per image`` images.
    """
    order: list[tuple[int, int]] = []
    for i in rng.permutation(len(samples)):
        order += [(int(i), int(k)) for k in rng.permutation(len(samples[i].instances))]
    return [order[j : j + batch] for j in range(0, len(order), batch)]


def steps_per_epoch(samples: Sequence[Sample], batch: int) -> int:
    return math.ceil(sum(len(s.instances) for s in samples) / batch)


def lr_lambda(total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor of step ``s``: linear warm-up over ``WARMUP_STEPS``, then cosine to ``FINAL_LR_FRACTION``."""
    warmup = max(1, min(WARMUP_STEPS, total_steps // 4))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class Trainer:
    """The model, its optimizer and the data access one epoch needs.

    Args:
        sam: the model (its trainable part already chosen with ``set_trainable``).
        params: the parameters being trained.
        options: the fine-tune options.
        features: ``Sample -> Features`` on the CPU (the embedding cache).
        total_steps: optimizer steps of the whole run (for the learning-rate schedule).
    """

    def __init__(
        self,
        sam: TrainableSam,
        params: list[torch.nn.Parameter],
        options: FinetuneOptions,
        *,
        features: Callable[[Sample], Features],
        total_steps: int,
    ) -> None:
        self.sam = sam
        self.options = options
        self.features = features
        self.optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(total_steps))
        half = sam.device.type == "cuda" and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler(sam.device.type, enabled=half)

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    def train_epoch(
        self, samples: Sequence[Sample], rng: np.random.Generator, *, on_step: Callable[[float], None] | None = None
    ) -> float:
        """One pass over the training objects; returns the mean loss per object and round."""
        for module in self.sam.modules(self.options.train):
            module.train()
        losses, counts = 0.0, 0
        for batch in epoch_batches(samples, self.options.batch, rng):
            self.optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for i, ks in _by_image(batch):
                step_loss += self._image_loss(samples[i], ks, rng, batch_size=len(batch))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            losses += step_loss * len(batch)
            counts += len(batch)
            if on_step is not None:
                on_step(step_loss)
        for module in self.sam.modules(self.options.train):
            module.eval()
        return losses / max(counts, 1)

    def _image_loss(self, sample: Sample, ks: list[int], rng: np.random.Generator, *, batch_size: int) -> float:
        """Run every prompting round for objects ``ks`` of one image, backpropagating each; returns their loss share."""
        sam, device = self.sam, self.sam.device
        rounds = 1 + self.options.clicks
        feats = _to(self.features(sample), device)
        rows, cols = sample.cells
        jittered = jitter_boxes(sample.instances.xyxy[ks], sample.hw, rng, fraction=self.options.box_jitter)
        boxes = sam.profile.scale_boxes(jittered, sample.hw)
        boxes_t = torch.from_numpy(boxes).to(device)
        target = torch.from_numpy(np.stack([sample.targets[k].dense((rows, cols)) for k in ks])).to(device)
        target_np = target.cpu().numpy() >= 0.5
        points = labels = mask_input = None
        total = 0.0
        for r in range(rounds):
            with autocast(device):
                logits, iou = sam.decode(feats, boxes_t, points=points, labels=labels, mask_input=mask_input)
            terms = sam_loss(logits[:, :rows, :cols].float(), iou.float(), target)
            loss = terms.total.sum() / (batch_size * rounds)
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
            if r + 1 < rounds:
                pred = (logits.detach()[:, :rows, :cols] > 0).cpu().numpy()
                xy, lab = sample_clicks(pred, target_np, rng)
                xy_t = torch.from_numpy(xy * _CELL + (_CELL / 2 - 0.5)).to(device)[:, None]  # cell centre, input px
                lab_t = torch.from_numpy(lab).to(device)[:, None]
                points = xy_t if points is None else torch.cat([points, xy_t], 1)
                labels = lab_t if labels is None else torch.cat([labels, lab_t], 1)
                mask_input = logits.detach().float()[:, None]
        return total


def _by_image(batch: list[tuple[int, int]]) -> list[tuple[int, list[int]]]:
    """Group a batch's (sample, object) pairs by sample, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i, k in batch:
        groups.setdefault(i, []).append(k)
    return list(groups.items())


def _to(features: Features, device: torch.device) -> Features:
    return {k: v.to(device, non_blocking=True) for k, v in features.items()}


# ------------------------------------------------------------------------------------------ validation


@torch.no_grad()
def predict(sam: TrainableSam, features: Features, sample: Sample, *, chunk: int) -> Instances:
    """The masks the SAM stage would give the sample's objects, prompted with their dataset boxes.

    Boxes are decoded in chunks (single-mask output, no clicks), and each low-res logit map is
    upsampled to the image by the SAM stage's ``Upsampler``.

    Returns:
        ``sample.instances`` with ``masks`` and ``mask_score`` (the IoU head's output) replaced.
    """
    device = sam.device
    feats = _to(features, device)
    upsampler = Upsampler(sample.hw, device=device, profile=sam.profile)
    threshold = sam.threshold
    boxes = torch.from_numpy(sam.profile.scale_boxes(sample.instances.xyxy, sample.hw)).to(device)
    masks: list[CropMask] = []
    scores: list[float] = []
    for start in range(0, len(boxes), chunk):
        with autocast(device):
            logits, iou = sam.decode(feats, boxes[start : start + chunk])
        masks += [upsampler(lg.float(), threshold=threshold) for lg in logits]
        scores += iou.float().cpu().tolist()
    return sample.instances.replace(masks=tuple(masks), mask_score=np.array(scores, dtype=np.float32))


def match_ious(pred: Instances, gt: Instances, hw: tuple[int, int]) -> list[tuple[int, float]]:
    """(class id, mask IoU) of each GT object's one-to-one match, 0 for a GT object left unmatched.

    The matching of ``samlabel evaluate`` with ``match_iou=0``: per class, the assignment that
    maximises the summed mask IoU over pairs that overlap at all (Hungarian), IoU from pycocotools
    on the masks' RLEs.
    """
    out = []
    for c in np.unique(gt.class_id):
        gi, pi = np.flatnonzero(gt.class_id == c), np.flatnonzero(pred.class_id == c)
        g_rle = [full_rle(gt.masks[j], hw) for j in gi]
        p_rle = [full_rle(pred.masks[j], hw) for j in pi]
        iou = np.asarray(mask_utils.iou(p_rle, g_rle, [0] * len(g_rle))) if p_rle and g_rle else np.zeros((0, 0))
        best = np.zeros(len(gi))
        for r, col in match_instances(iou.reshape(len(pi), len(gi)), match_iou=0.0):
            best[col] = iou[r, col]
        out += [(int(c), float(v)) for v in best]
    return out


def validate(
    sam: TrainableSam, samples: Sequence[Sample], names: Sequence[str], *, features: Callable[[Sample], Features]
) -> dict:
    """Mask IoU of the validation objects, each prompted with its box.

    Returns:
        ``{"iou": mean over objects, "per_class": {name: mean or None}, "objects": n, "matched": n with IoU > 0}``.
    """
    sam.model.eval()
    chunk = 4 if sam.device.type == "cpu" else 32  # as the SAM stage decodes on CPU / GPU
    found: list[tuple[int, float]] = []
    for s in samples:
        pred = predict(sam, features(s), s, chunk=chunk)
        found += match_ious(pred, s.instances, s.hw)
    per: dict[int, list[float]] = {}
    for c, v in found:
        per.setdefault(c, []).append(v)
    label = {c: (names[c] if 0 <= c < len(names) else str(c)) for c in per}
    return {
        "iou": float(np.mean([v for _, v in found])) if found else 0.0,
        "per_class": {label[c]: float(np.mean(v)) for c, v in sorted(per.items())},
        "objects": len(found),
        "matched": sum(v > 0 for _, v in found),
    }


def make_features(sam: TrainableSam, cache: EmbeddingCache) -> Callable[[Sample], Features]:
    """``Sample -> Features``: from the cache, encoding the image (read then) on a miss."""
    from pipeline.images import load_image

    def features(sample: Sample) -> Features:
        return cache.get(sample.digest, lambda: sam.encode(load_image(sample.path).rgb))

    return features
