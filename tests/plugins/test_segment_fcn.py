"""d2l.ai's FCN arithmetic (SPEC.md section 5) against the book's worked examples, and the masks
``train.segmenter`` reads (plugins/imgflow_segment/fcn.py, masks.py)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from imgflow_segment import fcn
from imgflow_segment.masks import ClassList, MaskFolder
from imgflow_segment.voc import VOC_CLASSES, encode_mask_png, voc_colormap
from PIL import Image
from torch import nn
from torch.nn import functional as F

from imgflow import ConfigError, ItemError

X = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 1, 2, 2)
K = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 1, 2, 2)


def tconv(**kwargs) -> torch.Tensor:
    layer = nn.ConvTranspose2d(1, 1, kernel_size=2, bias=False, **kwargs)
    layer.weight.data = K.clone()
    with torch.no_grad():
        return layer(X)


def test_transposed_convolution_examples_of_the_book():
    assert tconv().tolist() == [[[[0.0, 0.0, 1.0], [0.0, 4.0, 6.0], [4.0, 12.0, 9.0]]]]
    assert tconv(padding=1).tolist() == [[[[4.0]]]]  # padding removes the outer rows and columns
    assert tconv(stride=2).tolist() == [[[[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 2.0, 3.0], [0.0, 2.0, 0.0, 3.0],
                                          [4.0, 6.0, 6.0, 9.0]]]]
    x = torch.rand(1, 10, 16, 16, generator=torch.Generator().manual_seed(0))
    conv = nn.Conv2d(10, 20, kernel_size=5, padding=2, stride=3)
    back = nn.ConvTranspose2d(20, 10, kernel_size=5, padding=2, stride=3)
    with torch.no_grad():
        assert back(conv(x)).shape == x.shape  # same hyper-parameters: back to the input's shape


@pytest.mark.parametrize("size,kernel,stride,padding", [(2, 2, 1, 0), (2, 2, 1, 1), (2, 2, 2, 0), (10, 64, 32, 16),
                                                        (15, 64, 32, 16), (6, 5, 3, 2), (561, 4, 2, 1)])
def test_transposed_output_size_rule(size, kernel, stride, padding):
    expected = (size - 1) * stride - 2 * padding + kernel
    assert fcn.transposed_output_size(size, kernel, stride, padding) == expected
    layer = nn.ConvTranspose2d(1, 1, kernel_size=(kernel, 3), stride=(stride, 1), padding=(padding, 1))
    with torch.no_grad():
        assert layer(torch.zeros(1, 1, size, 3)).shape[-2] == expected
    # the FCN's layer: kernel 64, padding 16, stride 32 multiplies by 32 (320 x 480 from 10 x 15)
    assert fcn.transposed_output_size(10, 64, 32, 16) == 320 and fcn.transposed_output_size(15, 64, 32, 16) == 480


def test_bilinear_kernel_is_the_books_formula_and_upsamples():
    w = fcn.bilinear_kernel(3, 3, 4)
    factor, centre = 2, 1.5  # (k + 1) // 2 and factor - 0.5 for an even k
    row = torch.tensor([1 - abs(i - centre) / factor for i in range(4)])
    assert torch.allclose(w[1, 1], row[:, None] * row[None, :])
    assert torch.equal(w[0, 1], torch.zeros(4, 4)) and torch.equal(w[2, 0], torch.zeros(4, 4))
    odd = fcn.bilinear_kernel(1, 1, 3)[0, 0]  # k odd: centre = factor - 1
    assert torch.allclose(odd, torch.tensor([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]))
    # the book's example: kernel 4, padding 1, stride 2 doubles the 561 x 728 photo
    image = torch.rand(1, 3, 561, 728, generator=torch.Generator().manual_seed(0))
    up = nn.ConvTranspose2d(3, 3, kernel_size=4, padding=1, stride=2, bias=False)
    up.weight.data.copy_(w)
    with torch.no_grad():
        out = up(image)
    assert out.shape == (1, 3, 1122, 1456)
    reference = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(out[..., 1:-1, 1:-1], reference[..., 1:-1, 1:-1], atol=1e-5)  # bilinear inside


def test_fcn_resnet18_is_the_books_network():
    torch.manual_seed(0)
    net = fcn.fcn_resnet18(21)
    names = [name for name, _ in net.named_children()]
    assert names == [str(i) for i in range(8)] + ["final_conv", "transpose_conv"]
    assert tuple(net.final_conv.weight.shape) == (21, 512, 1, 1)
    t = net.transpose_conv
    assert (t.kernel_size, t.stride, t.padding) == ((64, 64), (32, 32), (16, 16))
    assert torch.equal(t.weight.data, fcn.bilinear_kernel(21, 21, 64))
    x = torch.zeros(1, 3, 64, 96)  # the book's 320 x 480 gives 10 x 15 the same way, 25 times slower
    with torch.no_grad():
        assert net[:8](x).shape == (1, 512, 2, 3)
        assert net(x).shape == (1, 21, 64, 96)
        padded = fcn.PaddedFCN(net.eval())(torch.rand(1, 3, 70, 100))["out"]
    assert padded.shape == (1, 21, 70, 100)  # any size: padded to a multiple of 32, cropped back


def test_imagenet_resnet18_keys_map_onto_the_trunk():
    from torchvision.models import resnet18

    torch.manual_seed(1)
    imagenet = resnet18(weights=None).state_dict()
    trunk = fcn.trunk_state_from_resnet18(imagenet)
    net = fcn.fcn_resnet18(3)
    own = net.state_dict()
    assert set(trunk) == {k for k in own if k.split(".")[0] in {str(i) for i in range(8)}}
    assert torch.equal(trunk["0.weight"], imagenet["conv1.weight"])
    assert torch.equal(trunk["7.1.bn2.running_var"], imagenet["layer4.1.bn2.running_var"])


# ---------------------------------------------------------------------------------------------
# masks and class names
# ---------------------------------------------------------------------------------------------


def save(path, array: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        path.write_bytes(encode_mask_png(array))
    else:
        Image.fromarray(array.astype(np.uint8), mode=mode).save(path)


def test_masks_are_read_from_palette_gray_and_colour_pngs(tmp_path):
    labels = np.zeros((6, 8), dtype=np.uint8)
    labels[1:4, 2:5] = 2
    labels[5, :] = 255
    classes = ClassList.resolve(["background", "banana", "coin"], [], None)
    folder = MaskFolder(tmp_path / "masks", classes)
    save(tmp_path / "masks" / "a" / "p.png", labels, "P")
    save(tmp_path / "masks" / "g.png", labels, "L")
    colours = np.array(voc_colormap(256), dtype=np.uint8)[labels]
    Image.fromarray(colours, mode="RGB").save(tmp_path / "masks" / "c.png")
    for relpath in ("a/p.jpg", "g.jpeg", "c.png"):
        assert folder.has(relpath)
        mask = folder.targets(relpath, 6, 8).mask
        assert mask.dtype == torch.int64 and mask.shape == (1, 6, 8)
        assert torch.equal(mask[0], torch.from_numpy(labels.astype(np.int64))), relpath
    assert not folder.has("missing.jpg")


def test_bad_masks_fail_the_item_with_the_reason(tmp_path):
    classes = ClassList.resolve(["background", "banana"], [], None)
    folder = MaskFolder(tmp_path, classes)
    save(tmp_path / "big.png", np.zeros((6, 8), dtype=np.uint8), "L")
    with pytest.raises(ItemError, match="the mask is 8x6, the image 9x6") as info:
        folder.targets("big.jpg", 6, 9)
    assert info.value.code == "label_error"
    save(tmp_path / "seven.png", np.full((4, 4), 7, dtype=np.uint8), "L")
    with pytest.raises(ItemError, match=r"values \[7\] are no class"):
        folder.targets("seven.jpg", 4, 4)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ItemError, match="cannot read the mask"):
        folder.targets("broken.jpg", 4, 4)


def test_class_names_from_json_toml_or_voc(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["bg", "cat"], "palette": [[0, 0, 0], [9, 8, 7]]}))
    found = ClassList.resolve(None, [tmp_path], None)
    assert found.names == ("bg", "cat") and found.palette[1] == (9, 8, 7)
    toml = tmp_path / "c.toml"
    toml.write_text('classes = ["background", "dog", "cat"]\n')
    read = ClassList.resolve("c.toml", [], lambda p: tmp_path / p)
    assert read.names == ("background", "dog", "cat") and read.palette[2] == tuple(voc_colormap(3)[2])
    assert ClassList.resolve(None, [tmp_path / "nothing"], None).names == VOC_CLASSES
    for bad in (["only"], ["a", "a"]):
        with pytest.raises(ConfigError):
            ClassList.resolve(bad, [], None)
    (tmp_path / "bad.json").write_text('{"classes": ["a", "b"], "palette": [[1, 2, 3]]}')
    with pytest.raises(ConfigError, match="one \\[r, g, b\\]"):
        ClassList.read(tmp_path / "bad.json")


def test_mask_png_keeps_a_trained_palette():
    labels = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    data = encode_mask_png(labels, [(0, 0, 0), (255, 210, 0), (90, 130, 255)])
    image = Image.open(io.BytesIO(data))
    assert np.array_equal(np.asarray(image), labels)
    assert image.getpalette()[3:9] == [255, 210, 0, 90, 130, 255]
    assert image.getpalette()[3 * 255:3 * 256] == list(voc_colormap(256)[255])
