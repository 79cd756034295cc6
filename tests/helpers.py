"""Small helpers the test modules share."""

from PIL import Image, ImageDraw

# the generated COCO-format set the data and task tests share (the conftest's demo_coco)
DEMO_IMAGES = 30
DEMO_SEED = 0


def both(value):
    """The same source for the train and the eval split."""
    return {"train": value, "eval": value}


def drawing(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    """A grey image with a coloured disc and a blue square: content for a vision tower."""
    image = Image.new("RGB", size, (200, 200, 200))
    draw = ImageDraw.Draw(image)
    width, height = size
    draw.ellipse([width // 8, height // 8, width // 2, height // 2], fill=colour)
    draw.rectangle([width // 2, height // 2, width - 4, height - 4], fill=(30, 30, 160))
    return image
