"""Class names."""

from __future__ import annotations

from pathlib import Path

# '~' joins the words of two-word names.
COCO_LABELS = [
    w.replace("~", " ")
    for w in (
        "person bicycle car motorbike aeroplane bus train truck boat traffic~light fire~hydrant stop~sign "
        "parking~meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag "
        "tie suitcase frisbee skis snowboard sports~ball kite baseball~bat baseball~glove skateboard surfboard "
        "tennis~racket bottle wine~glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
        "hot~dog pizza donut cake chair sofa pottedplant bed diningtable toilet tvmonitor laptop mouse remote "
        "keyboard cell~phone microwave oven toaster sink refrigerator book clock vase scissors teddy~bear "
        "hair~drier toothbrush"
    ).split()
]


def load_labels(path: str | Path | None) -> list[str]:
    """Names from a file (one per line), or COCO's 80 when no file is given."""
    if path is None:
        return list(COCO_LABELS)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"labels file not found: {p}")
    names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"labels file {p} has no names")
    return names
