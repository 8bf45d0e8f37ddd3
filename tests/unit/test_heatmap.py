import torch

from memguard.core.heatmap import burnt_map, colormap, excess_share, overlay, to_image_map


def test_excess_is_shared_by_location_and_zero_inside_the_band():
    energy = torch.zeros(2, 4, 4)
    energy[:, 1, 2] = 3.0
    energy[:, 0, 0] = 1.0
    out = excess_share(energy, torch.tensor([4.0, 1.0]), band_hi=2.0)
    assert torch.allclose(out[0].sum(), torch.tensor(16.0 - 4.0))
    assert out[0, 1, 2] == 3 * out[0, 0, 0]
    assert out[1].abs().sum() == 0


def test_image_map_normalises_upsamples_and_sums_video_time():
    m = torch.zeros(2, 3, 4, 4)
    m[0, 1, 2, 2] = 5.0
    img = to_image_map(m, 32, 32)
    assert img.shape == (2, 32, 32)
    assert 0.99 <= float(img[0].max()) <= 1.0 and float(img[1].max()) == 0.0
    assert to_image_map(torch.zeros(0, 4, 4), 8, 8).shape == (0, 8, 8)


def test_overlay_and_colormap():
    images = torch.zeros(2, 16, 16, 3)
    images[..., 0] = 1.0                       # pure red: its grey is 0.2126
    heat = torch.zeros(2, 8, 8)
    heat[1] = 1.0
    out = overlay(images, heat, alpha=1.0)
    assert out.shape == (2, 16, 16, 3)
    assert torch.allclose(out[0], torch.full((16, 16, 3), 0.2126))        # cold: the image's grey
    assert torch.allclose(out[1], colormap(torch.ones(1, 1, 1))[0, 0, 0].expand(16, 16, 3))   # hot: the colour
    assert torch.equal(overlay(images, heat, alpha=0.0), images)           # alpha 0: the image untouched
    half = overlay(images, torch.zeros(2, 8, 8), alpha=0.5)[0, 0, 0]
    assert torch.allclose(half, 0.5 * images[0, 0, 0] + 0.5 * 0.2126)
    assert colormap(torch.zeros(1, 1, 1))[0, 0, 0].sum() < colormap(torch.ones(1, 1, 1))[0, 0, 0].sum()


def test_burnt_map_counts_clipped_channels():
    img = torch.full((1, 2, 2, 3), 0.5)
    img[0, 0, 0] = torch.tensor([1.0, 1.0, 0.5])
    img[0, 1, 1] = torch.tensor([0.0, 1.0, 1.0])
    b = burnt_map(img)
    assert torch.allclose(b[0], torch.tensor([[2 / 3, 0.0], [0.0, 1.0]]))
