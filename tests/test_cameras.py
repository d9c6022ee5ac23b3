"""MVDream cameras against the official numbers (mvdream-camera.json)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import reference_path

from dreamdist3d.backbones.cameras import c2w_from_spherical, c2w_to_mvdream_camera, get_camera


def _camera_json():
    return json.loads(reference_path("mvdream-camera.json").read_text())


def test_get_camera_matches_official():
    js = _camera_json()
    assert len(js["get_camera"]) == 3
    for case in js["get_camera"]:
        got = get_camera(**case["kwargs"])
        want = torch.tensor(case["cameras"], dtype=torch.float32)
        assert got.dtype == torch.float32 and tuple(got.shape) == tuple(case["shape"])
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_threestudio_worked_examples():
    js = _camera_json()["threestudio"]
    assert len(js["examples"]) == 3
    for ex in js["examples"]:
        e, a, d = ex["threestudio_elevation_deg"], ex["threestudio_azimuth_deg"], ex["camera_distance"]
        c2w_ref = torch.tensor(ex["c2w"], dtype=torch.float32)
        c2w = c2w_from_spherical(e, a, d)
        assert c2w.shape == (1, 4, 4)
        torch.testing.assert_close(c2w[0], c2w_ref, atol=1e-6, rtol=0)

        before = c2w_ref.clone()
        vec = c2w_to_mvdream_camera(c2w_ref[None])
        torch.testing.assert_close(vec[0], torch.tensor(ex["camera_vector"]), atol=1e-6, rtol=0)
        assert torch.equal(c2w_ref, before), "c2w_to_mvdream_camera must not mutate its input"

        # azimuth relation: threestudio azimuth a == MVDream azimuth a + 90
        torch.testing.assert_close(vec, get_camera(1, elevation=e, azimuth_start=a + 90), atol=1e-6, rtol=0)


def test_batched_c2w_and_errors():
    e = torch.tensor([0.0, 15.0, 30.0, -10.0])
    a = torch.tensor([0.0, 90.0, 180.0, 270.0])
    vec = c2w_to_mvdream_camera(c2w_from_spherical(e, a, 2.0))
    assert vec.shape == (4, 16)
    for i in range(4):
        torch.testing.assert_close(vec[i : i + 1], get_camera(1, float(e[i]), float(a[i]) + 90), atol=1e-6, rtol=0)
    # 4 views 90 degrees apart == get_camera(4, ...)
    vec4 = c2w_to_mvdream_camera(c2w_from_spherical(15.0, torch.tensor([0.0, 90, 180, 270]), 3.0))
    torch.testing.assert_close(vec4, get_camera(4, 15, 90), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        c2w_to_mvdream_camera(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError):
        get_camera(0)
