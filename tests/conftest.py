"""Fixtures shared by several test modules."""

import pytest
from PIL import Image


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Three plain-colour PNG paths of different shapes: 56 x 56 red, 112 x 56 blue, 56 x 112 green."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for name, size, colour in [("a", (56, 56), "red"), ("b", (112, 56), "blue"), ("c", (56, 112), "green")]:
        Image.new("RGB", size, colour).save(folder / f"{name}.png")
        paths.append(str(folder / f"{name}.png"))
    return paths
