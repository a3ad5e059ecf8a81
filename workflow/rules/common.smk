# Paths and small helpers shared by the rules. Everything lives under config["results"].
import os
import shlex

from snakemake.exceptions import WorkflowError

from orl.config_check import results_folder
from orl.data.images import listing_digest

try:
    R = results_folder(config)  # "~" expanded; "", "/", a file or a folder inside the dataset refused
except ValueError as e:
    raise WorkflowError(str(e)) from None
DATASET = config["dataset"]

DEMO_DIR = f"{R}/data/demo"
INDEX = f"{R}/index/images.h5"


def train_images():
    """The folder of pretraining images for the configured dataset."""
    if DATASET["kind"] == "demo":
        return f"{DEMO_DIR}/train"
    return DATASET["images"]


def train_annotations():
    """The COCO instances JSON of the pretraining images, or None for a plain image folder."""
    if DATASET["kind"] == "demo":
        return f"{DEMO_DIR}/annotations/instances_train.json"
    return DATASET.get("annotations")


def dataset_inputs(wildcards=None):
    """Inputs of the index rule: the demo folder (so it is generated first) or the user's files."""
    if DATASET["kind"] == "demo":
        return [DEMO_DIR]
    return [p for p in (DATASET["images"], DATASET.get("annotations")) if p]


DEMO_CROPS = f"{R}/data/demo_crops"
KNN_MONITOR = config["pretrain"]["knn_monitor"]


def knn_monitor_dirs():
    """(train_dir, val_dir) of the trainer's kNN monitor: configured, else the demo's crops; None when it is off."""
    if KNN_MONITOR["every"] < 1:
        return None
    if KNN_MONITOR["train_dir"] or KNN_MONITOR["val_dir"]:
        if not (KNN_MONITOR["train_dir"] and KNN_MONITOR["val_dir"]):
            raise ValueError("pretrain.knn_monitor: set both train_dir and val_dir, or neither")
        return KNN_MONITOR["train_dir"], KNN_MONITOR["val_dir"]
    if DATASET["kind"] == "demo":
        return f"{DEMO_CROPS}/train", f"{DEMO_CROPS}/val"
    return None  # no labelled crops: off


def knn_monitor_flags(image_size):
    """The `orl pretrain` flags of the kNN monitor ('' when it is off); crops resized to image_size unless set."""
    dirs = knn_monitor_dirs()
    if dirs is None:
        return ""
    return quoted(
        "--knn-train-dir", dirs[0], "--knn-val-dir", dirs[1], "--knn-every", KNN_MONITOR["every"],
        "--knn-k", KNN_MONITOR["k"], "--knn-temperature", KNN_MONITOR["temperature"],
        "--knn-image-size", KNN_MONITOR["image_size"] or image_size,
    )


def dataset_listing(wildcards=None):
    """A digest of the image files' names, sizes and mtimes: a params change (so a rerun) when any image changes.

    The demo folder is remade whole by its own rule, so its mtime suffices (and it may not exist yet at parse time).
    """
    return "" if DATASET["kind"] == "demo" else listing_digest(DATASET["images"])


def optional_flag(flag, value):
    """'--flag value' (value shell-quoted) when value is set, else nothing (keeps shell strings stable when unset)."""
    return f"{flag} {shlex.quote(str(value))}" if value not in (None, "") else ""


def optional_flags(flag, values):
    """'--flag v1 v2 ...' with each value shell-quoted (for nargs flags), or nothing when there are none."""
    return f"{flag} {' '.join(shlex.quote(str(v)) for v in values)}" if values else ""


def quoted(*words):
    """Words joined into shell text, each quoted: for params that hold flags and paths together."""
    return " ".join(shlex.quote(str(w)) for w in words)

PROPOSALS = config["proposals"]
# The quality JSON holds box counts always, and recall of ground-truth boxes when the dataset is annotated.
PROPOSALS_QUALITY = f"{R}/mining/proposals_quality.json"
PROPOSALS_OUT = [f"{R}/mining/proposals.h5", PROPOSALS_QUALITY]

# Stage-1 methods pretrained by this config: BYOL always, the baselines when listed.
PRETRAIN_METHODS = ["byol"] + list(config["baselines"])
# Stage-3 runs: ORL, and each ablation of orl_ablations (ORL with some method arguments changed, e.g. w_inter: 0).
ORL_RUNS = ["orl"] + list(config["orl_ablations"])
# Backbones exported and benchmarked: every pretrained method, the ORL runs, and a random-init reference.
EXPORT_METHODS = PRETRAIN_METHODS + ORL_RUNS + ["random"]


def method_of(run):
    """The method a pretraining run trains: 'orl' for ORL's ablations, else the run's own name."""
    return "orl" if run in ORL_RUNS else run

# Pair quality needs instance annotations (demo and COCO-format data have them; a plain folder does not).
HAS_ANNOTATIONS = DATASET["kind"] != "folder"
PAIR_QUALITY = f"{R}/mining/pair_quality.json"
CORRESPONDENCE_OUT = [f"{R}/mining/correspondence.h5"] + ([PAIR_QUALITY] if HAS_ANNOTATIONS else [])
