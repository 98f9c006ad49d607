from __future__ import annotations

import pytest
import torch

import satunet
from satunet.errors import (
    ConfigError,
    InputSizeError,
    UnknownNameError,
    WeightsUnavailableError,
)
from satunet.models import Level, UNet, create_model, list_models, model_options
from satunet.profile import count_params

STUDY_MODELS = [
    "unet_base",
    "unet_short",
    "unet_skinny",
    "unet_less_conv",
    "unetplusplus_resnet34",
    "deeplabv3plus_resnet34",
]
PARAMS = {  # seed spec sections 2, 3 and 11
    5: [31_043_781, 8_254_981, 20_095_781, 20_281_253, 26_079_189, 22_438_485],
    8: [31_043_976, 8_255_368, 20_095_880, 20_281_352, 26_079_624, 22_439_256],
}


def test_registry_lists_study_models():
    assert set(STUDY_MODELS) <= set(list_models())
    assert satunet.list_models() == list_models()


@pytest.mark.parametrize("num_classes", [5, 8])
@pytest.mark.parametrize("index", range(6), ids=STUDY_MODELS)
def test_preset_param_count(index: int, num_classes: int):
    with torch.device("meta"):
        model = create_model(STUDY_MODELS[index], num_classes=num_classes)
    assert count_params(model) == PARAMS[num_classes][index]


@pytest.mark.parametrize("name", STUDY_MODELS)
def test_output_shape(name: str):
    model = create_model(name, num_classes=7, in_channels=3).eval()
    multiple = model.size_multiple
    h, w = 2 * multiple, 3 * multiple  # non-square, smallest sizes every model takes
    with torch.no_grad():
        out = model(torch.rand(2, 3, h, w))
    assert out.shape == (2, 7, h, w)
    assert out.dtype == torch.float32


def test_multispectral_input_and_bilinear_option():
    model = create_model("unet_skinny", in_channels=13, num_classes=4, upsample="bilinear").eval()
    with torch.no_grad():
        out = model(torch.rand(1, 13, 64, 64))
    assert out.shape == (1, 4, 64, 64)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())


def test_levels_are_data():
    tiny = UNet((Level(4), Level(8, 1), Level(16, 3)), in_channels=2, num_classes=3)
    assert len(tiny.encoder) == 2 and len(tiny.decoder) == 2
    assert tiny.size_multiple == 4
    assert tiny(torch.rand(1, 2, 12, 8)).shape == (1, 3, 12, 8)


def test_unknown_model_suggests_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'unet_skinny'") as info:
        create_model("unet_skiny", num_classes=5)
    assert "deeplabv3plus_resnet34" in str(info.value)


def test_unknown_option_is_an_error():
    with pytest.raises(UnknownNameError, match="'upsample'"):
        create_model("unet_skinny", num_classes=5, upsampel="bilinear")
    with pytest.raises(UnknownNameError):
        create_model("deeplabv3plus_resnet34", num_classes=5, dropout=0.2)
    assert model_options("deeplabv3plus_resnet34") == ["encoder_weights"]


@pytest.mark.parametrize("name", ["unet_skinny", "deeplabv3plus_resnet34"])
def test_bad_input_size_says_what_works(name: str):
    model = create_model(name, num_classes=5).eval()
    with pytest.raises(InputSizeError, match=r"divisible by \d+.*height \d+ or \d+"):
        model(torch.rand(1, 3, 100, 100))


def test_wrong_band_count_is_explained():
    model = create_model("unet_skinny", num_classes=5)
    with pytest.raises(InputSizeError, match="built for 3 input bands but got 4"):
        model(torch.rand(1, 4, 64, 64))


def test_imagenet_offline_fails_clearly(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="could not fetch.*encoder_weights="):
        create_model("deeplabv3plus_resnet34", num_classes=5, encoder_weights="imagenet")


def test_local_encoder_weights(tmp_path):
    source = create_model("deeplabv3plus_resnet34", num_classes=5)
    weights = {k: v.clone().fill_(0.5) for k, v in source.encoder.state_dict().items()}
    weights["fc.weight"] = torch.zeros(1000, 512)  # torchvision files carry the classifier too
    weights["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet34.pth"
    torch.save(weights, path)
    model = create_model("deeplabv3plus_resnet34", num_classes=5, encoder_weights=str(path))
    assert torch.all(model.encoder.conv1.weight == 0.5)

    with pytest.raises(WeightsUnavailableError, match="neither 'imagenet' nor an existing file"):
        create_model("deeplabv3plus_resnet34", num_classes=5, encoder_weights=tmp_path / "no.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, bad)
    with pytest.raises(WeightsUnavailableError, match="does not match the resnet34 encoder"):
        create_model("unetplusplus_resnet34", num_classes=5, encoder_weights=bad)


# --- design space, new presets and presets files (issue 7) -------------------------------------

TINY_LEVELS = (Level(8, 1), Level(16, 2), Level(16, 1))
OPTIONS = [
    {"upsample": "bilinear"},
    {"conv": "separable"},
    {"groups": 4},
    {"residual": True},
    {"skip": "add"},
    {"skip": "sdi"},
    {"skip": "sdi", "sdi_channels": 4, "conv": "separable"},
    {"skip": "sdi", "sdi_init": "identity"},
    {"context": "ppm"},
    {"context": "aspp", "conv": "separable"},
    {"stem_stride": 2},
    {"stem_stride": 4, "skip": "sdi", "context": "ppm", "residual": True},
]


@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
def test_every_option_maps_shape_and_trains(options: dict):
    torch.manual_seed(0)
    model = UNet(TINY_LEVELS, in_channels=3, num_classes=3, **options)
    multiple = options.get("stem_stride", 1) * 4
    assert model.size_multiple == multiple
    x = torch.rand(2, 3, 2 * multiple, 3 * multiple)
    out = model(x)
    assert out.shape == (2, 3, 2 * multiple, 3 * multiple)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())  # no dead branch
    assert model.spec().options == options  # the design round-trips as data
    with pytest.raises(InputSizeError, match=f"divisible by {multiple}"):
        model(torch.rand(1, 3, multiple + 2, multiple))


def test_options_change_the_tree_only_where_switched_on():
    plain = UNet(TINY_LEVELS, num_classes=3)
    assert plain.stem is None and plain.context is None and plain.sdi is None
    assert plain.spec().options == {}
    names = {n for n, _ in plain.named_modules()}
    assert not any("shortcut" in n for n in names)
    residual = UNet(TINY_LEVELS, num_classes=3, residual=True)
    assert isinstance(residual.encoder[1].block.shortcut, torch.nn.Conv2d)  # 8 -> 16 projects
    grouped = UNet(TINY_LEVELS, num_classes=3, groups=4)
    assert grouped.encoder[0].block.layers[0].groups == 1  # reads the 3 input bands
    assert grouped.encoder[1].block.layers[0].groups == 4
    separable = UNet(TINY_LEVELS, num_classes=3, conv="separable")
    depthwise = separable.encoder[1].block.layers[0][0]
    assert depthwise.groups == depthwise.in_channels == 8


def test_bilinear_up_is_a_1x1_conv_then_resize():
    # The 1x1 conv commutes with bilinear resizing; running it first at low resolution is 4x
    # cheaper and gives the same result.
    from satunet.models.blocks import Up

    up = Up(8, 4, 1, "bilinear").up
    x = torch.rand(1, 8, 6, 6)
    resized = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear")
    expected = torch.nn.functional.conv2d(resized, up[0].weight, up[0].bias)
    assert torch.allclose(up(x), expected, atol=1e-5)


def test_sdi_skip_mixes_every_level():
    model = UNet(TINY_LEVELS, num_classes=3, skip="sdi").eval()
    skips = [torch.rand(1, 8, 8, 8), torch.rand(1, 16, 4, 4)]
    fused = model.sdi(skips)
    assert [f.shape[1:] for f in fused] == [(8, 8, 8), (8, 4, 4)]  # sdi_channels = first width
    changed = model.sdi([skips[0], skips[1] + 1.0])
    assert not torch.allclose(fused[0], changed[0])  # the deep level reaches the top skip


def _kurtosis(x: torch.Tensor) -> float:
    centred = x.flatten() - x.mean()
    return float((centred**4).mean() / centred.var() ** 2)


def test_sdi_identity_init_starts_the_product_near_a_sum():
    # unet_v2's slow start: a product of four unit-variance factors is spiky at init
    # (kurtosis ~100, a Gaussian's is 3); started near 1, it is close to Gaussian.
    levels = (Level(8, 1), Level(16, 1), Level(16, 1), Level(16, 1), Level(16, 1))
    skips = [torch.randn(2, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate((8, 16, 16, 16))]
    kurtosis = {}
    for init in ("product", "identity"):
        torch.manual_seed(0)
        sdi = UNet(levels, num_classes=3, skip="sdi", sdi_init=init).sdi.train()
        kurtosis[init] = _kurtosis(sdi(skips)[0].detach())
    assert kurtosis["product"] > 20
    assert kurtosis["identity"] < 5


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"upsample": "nearest"}, "upsample must be one of"),
        ({"skip": "sum"}, "skip must be one of"),
        ({"context": "psp"}, "context must be one of"),
        ({"skip": "sdi", "sdi_init": "zero"}, "sdi_init must be one of"),
        ({"stem_stride": 3}, "stem_stride must be 1, 2 or 4"),
        ({"groups": 3}, "groups=3 must divide"),
    ],
)
def test_bad_options_are_explained(options: dict, match: str):
    with pytest.raises(ValueError, match=match):
        UNet(TINY_LEVELS, num_classes=3, **options)


def test_new_presets_are_data_and_within_budget():
    from satunet.models import DESCRIPTIONS, PRESETS
    from satunet.profile import count_gmacs

    assert {"unet_fast", "unet_fast_stride4", "unet_v2"} <= set(list_models()) <= set(DESCRIPTIONS)
    with torch.device("meta"):
        fast = create_model("unet_fast", num_classes=5)
        v2 = create_model("unet_v2", num_classes=5)
        skinny = create_model("unet_skinny", num_classes=5)
    assert count_gmacs(fast, 512) <= 12.0  # issue 7's budget
    with torch.device("meta"):
        stride4 = create_model("unet_fast_stride4", num_classes=5)
    assert stride4.size_multiple == 64 and count_gmacs(stride4, 512) < count_gmacs(fast, 512) / 3
    assert count_gmacs(v2, 512) <= count_gmacs(skinny, 512)  # "about skinny's cost or less"
    assert v2.sdi is not None and fast.spec() == PRESETS["unet_fast"]
    # a preset's options can be overridden like any other option
    assert "upsample" in model_options("unet_fast")
    with torch.device("meta"):
        overridden = create_model("unet_fast", num_classes=5, upsample="transpose")
    assert "upsample" not in overridden.spec().options  # back to the default
    assert overridden.spec().options["stem_stride"] == 2


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_presets_file_round_trip(tmp_path, suffix: str):
    from satunet.models import PRESETS, load_presets, save_presets

    path = save_presets(
        tmp_path / f"mine{suffix}", {"a": PRESETS["unet_v2"], "b": PRESETS["unet_skinny"]}
    )
    loaded = load_presets(path)
    assert loaded["a"].levels == PRESETS["unet_v2"].levels
    assert dict(loaded["a"].options) == dict(PRESETS["unet_v2"].options)
    # The default recipe travels with the design: unet_v2's fast, the study's for skinny.
    assert (loaded["a"].recipe, loaded["b"].recipe) == ("fast", "study")
    model = create_model(f"{path}:a", num_classes=5, in_channels=4)
    reference = create_model("unet_v2", num_classes=5, in_channels=4)
    assert count_params(model) == count_params(reference)
    assert model.in_channels == 4 and model.size_multiple == 32
    with pytest.raises(UnknownNameError, match="Did you mean 'a'"):
        create_model(f"{path}:aa", num_classes=5)
    with pytest.raises(ConfigError, match="holds 2 presets"):
        create_model(str(path), num_classes=5)
    with pytest.raises(UnknownNameError, match="upsampel"):
        create_model(f"{path}:a", num_classes=5, upsampel="bilinear")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[presets.x]\nlevels = [[8, 1]]\n", "levels = \\[\\[channels, convs\\]"),
        ("[presets.x]\nlevels = [[8, 1], [16, 0]]\n", "level \\[16, 0\\]"),
        ("[presets.x]\nlevels = [[8, 1], [16, 1]]\nupsampel = 'bilinear'\n", "unknown option"),
        ("[presets.x]\nlevels = [[8, 1], [16, 1]]\nskip = 'sum'\n", "skip must be one of"),
        ("levels = [[8, 1], [16, 1]]\n", "no \\[presets.NAME\\] tables"),
        ("[presets.x\n", "not valid TOML"),
        ("[presets.x]\nlevels = [[8, 1], [16, 1]]\nrecipe = 3\n", "recipe must be"),
    ],
)
def test_bad_presets_file_names_file_and_problem(tmp_path, text: str, match: str):
    from satunet.models import load_presets

    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_presets(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["unet_fast", "unet_fast_stride4", "unet_v2"])
def test_new_presets_output_shape(name: str):
    model = create_model(name, num_classes=7).eval()
    m = model.size_multiple  # 32, 64 with the stride-4 stem
    with torch.no_grad():
        out = model(torch.rand(1, 3, 2 * m, 3 * m))
    assert out.shape == (1, 7, 2 * m, 3 * m)


@pytest.mark.parametrize("context", ["ppm", "aspp"])
def test_context_trains_at_batch_1_on_a_small_bottleneck(context: str):
    model = UNet(TINY_LEVELS, num_classes=3, context=context).train()
    model(torch.rand(1, 3, 8, 8)).sum().backward()  # 2x2 bottleneck, 1x1 pooled maps


# --- smp:ARCH:ENCODER models (issue 16) ---------------------------------------------------------

SMP_NAMES = ["smp:Unet:resnet18", "smp:FPN:mobilenet_v2", "smp:Segformer:mit_b0"]


def small_encoder(arch: str) -> str:
    return "tu-vit_tiny_patch16_224" if arch == "DPT" else "resnet18"


@pytest.mark.parametrize("name", SMP_NAMES)
def test_smp_model_contract(name: str):
    model = create_model(name, in_channels=4, num_classes=3).eval()
    assert (model.in_channels, model.num_classes, model.size_multiple) == (4, 3, 32)
    with torch.no_grad():
        out = model(torch.rand(1, 4, 64, 96))
    assert out.shape == (1, 3, 64, 96) and out.dtype == torch.float32
    with pytest.raises(InputSizeError, match=r"divisible by 32.*height 64 or 96"):
        model(torch.rand(1, 4, 80, 64))
    with pytest.raises(InputSizeError, match="built for 4 input bands but got 3"):
        model(torch.rand(1, 3, 64, 64))


def test_every_smp_architecture_keeps_its_size_multiple():
    """size_multiple is what each architecture really needs (checked on the meta device)."""
    from satunet.models import smp_architectures

    assert {"Unet", "FPN", "Linknet", "PSPNet", "PAN", "MAnet", "UPerNet", "Segformer"} <= set(
        smp_architectures()
    )
    for arch in smp_architectures():
        with torch.device("meta"):
            model = create_model(f"smp:{arch}:{small_encoder(arch)}", num_classes=3).eval()
        m, low = model.size_multiple, model.min_size
        side = -(-low // m) * m
        with torch.no_grad():
            out = model(torch.zeros(1, 3, side, side + m, device="meta"))
        assert out.shape == (1, 3, side, side + m), arch
        with pytest.raises(InputSizeError):
            model(torch.zeros(1, 3, side + m // 2, side, device="meta"))
        if low > m:  # e.g. PAN: 16-divisible but at least 128
            with pytest.raises(InputSizeError, match=f"at least {low}"):
                model(torch.zeros(1, 3, low - m, low, device="meta"))


def test_smp_study_baselines_are_the_same_models():
    with torch.device("meta"):
        for study, name in [
            ("unetplusplus_resnet34", "smp:UnetPlusPlus:resnet34"),
            ("deeplabv3plus_resnet34", "smp:deeplabv3plus:resnet34"),  # arch: any case
        ]:
            a, b = create_model(study, num_classes=5), create_model(name, num_classes=5)
            assert count_params(a) == count_params(b)
            assert a.size_multiple == b.size_multiple


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("smp:Unte:resnet18", UnknownNameError, "smp architecture 'Unte'. Did you mean 'Unet'"),
        ("smp:Unet:resnet81", UnknownNameError, "smp encoder .*Did you mean 'resnet18'"),
        ("smp:Unet:tu-resnet81", UnknownNameError, "timm encoder .*Did you mean 'tu-resnet18'"),
        ("smp:Unet", ConfigError, "smp:ARCH:ENCODER"),
        ("smp:UnetPlusPlus:mit_b0", ConfigError, "smp cannot build smp:UnetPlusPlus:mit_b0"),
    ],
)
def test_bad_smp_names_are_explained(name: str, error: type, match: str):
    from satunet.models import check_model_name

    with pytest.raises(error, match=match):
        create_model(name, num_classes=3)
    if error is UnknownNameError or name == "smp:Unet":
        with pytest.raises(error, match=match):
            check_model_name(name)


def test_check_and_describe_model_names():
    from satunet.models import check_model_name, describe_model

    for name in ["unet_fast", "smp:FPN:mobilenet_v2", "smp:Unet:tu-resnet18", "mine.toml:a"]:
        check_model_name(name)  # builds nothing
    with pytest.raises(UnknownNameError, match="Did you mean 'unet_fast'"):
        check_model_name("unet_fats")
    assert describe_model("smp:FPN:mobilenet_v2") == "smp FPN with a mobilenet_v2 encoder"
    assert describe_model("unet_fast").startswith("satunet:")


def test_smp_options_pass_through_and_unknown_ones_are_errors():
    assert model_options("smp:Unet:resnet18")[:3] == [
        "encoder_weights",
        "encoder_depth",
        "decoder_use_norm",
    ]
    assert "activation" not in model_options("smp:Unet:resnet18")  # satunet wants logits
    with torch.device("meta"):
        shallow = create_model(
            "smp:Unet:resnet18", num_classes=3, encoder_depth=4, decoder_channels=[64, 32, 16, 8]
        )
    assert shallow.size_multiple == 16
    with pytest.raises(UnknownNameError, match="Did you mean 'decoder_channels'"):
        create_model("smp:Unet:resnet18", num_classes=3, decoder_chanels=[8])
    with pytest.raises(ConfigError, match="with options"):
        create_model("smp:Unet:resnet18", num_classes=3, encoder_depth=4)  # 5 decoder channels


def test_segformer_mit_builds_on_the_meta_device():
    # mit_b* encoders call .item() while building: satunet builds them on the CPU, then moves
    with torch.device("meta"):
        model = create_model("smp:Segformer:mit_b0", num_classes=5)
    assert next(model.parameters()).device.type == "meta"
    assert count_params(model) == 3_715_429


@pytest.mark.parametrize("name", ["smp:FPN:mobilenet_v2", "smp:Unet:tu-resnet18"])
def test_smp_imagenet_offline_fails_fast(monkeypatch: pytest.MonkeyPatch, name: str):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="could not fetch.*encoder_weights="):
        create_model(name, num_classes=5, encoder_weights="imagenet")
    assert time.perf_counter() - start < 30


def test_smp_local_encoder_weights(tmp_path):
    source = create_model("smp:FPN:mobilenet_v2", num_classes=5)
    weights = {k: v.clone().fill_(0.25) for k, v in source.encoder.state_dict().items()}
    weights["classifier.1.weight"] = torch.zeros(1000, 1280)  # a torchvision file's classifier
    torch.save(weights, tmp_path / "mobilenet_v2.pth")
    model = create_model(
        "smp:FPN:mobilenet_v2", num_classes=5, encoder_weights=tmp_path / "mobilenet_v2.pth"
    )
    assert all(
        torch.all(t == 0.25) for t in model.encoder.state_dict().values() if t.is_floating_point()
    )

    with pytest.raises(WeightsUnavailableError, match="neither 'imagenet' nor an existing file"):
        create_model("smp:FPN:mobilenet_v2", num_classes=5, encoder_weights="nope.pth")
    with pytest.raises(WeightsUnavailableError, match="does not match the resnet18 encoder"):
        create_model(
            "smp:Unet:resnet18", num_classes=5, encoder_weights=tmp_path / "mobilenet_v2.pth"
        )


def test_smp_timm_encoder_takes_a_timm_state_dict(tmp_path):
    import timm

    timm_model = timm.create_model("resnet18", pretrained=False)  # what timm's hub file holds
    torch.nn.init.constant_(timm_model.conv1.weight, 0.5)
    torch.save(timm_model.state_dict(), tmp_path / "resnet18_timm.pth")
    model = create_model(
        "smp:Unet:tu-resnet18", num_classes=3, encoder_weights=str(tmp_path / "resnet18_timm.pth")
    )
    assert torch.all(model.encoder.model.conv1.weight == 0.5)


def test_smp_model_checkpoint_round_trip(tmp_path):
    from satunet.checkpoint import load_checkpoint, save_checkpoint

    model = create_model("smp:Unet:resnet18", num_classes=3, decoder_channels=[64, 32, 16, 8, 8])
    save_checkpoint(
        tmp_path / "best.pt",
        model,
        model_name="smp:Unet:resnet18",
        model_options={"decoder_channels": [64, 32, 16, 8, 8], "encoder_weights": "imagenet"},
        in_channels=3,
        num_classes=3,
        classes=["a", "b", "c"],
    )
    loaded, state = load_checkpoint(tmp_path / "best.pt")  # never fetches the imagenet weights
    assert loaded.size_multiple == 32 and loaded.num_classes == 3
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.eval()(x))


def test_models_cli_lists_every_smp_architecture(capsys: pytest.CaptureFixture):
    import json

    from satunet.cli import main
    from satunet.models import smp_architectures

    assert main(["models", "--all-smp", "--format", "json", "--num-classes", "5"]) == 0
    catalog = json.loads(capsys.readouterr().out)
    rows = {r["architecture"]: r for r in catalog["architectures"]}
    assert set(rows) == set(smp_architectures())
    assert rows["UnetPlusPlus"]["params"] == 26_079_189  # the study's baseline, same model
    assert rows["DeepLabV3Plus"]["name"] == "smp:DeepLabV3Plus:resnet34"
    assert all(r["gmacs"] > 0 and r["size"] == 512 for r in rows.values())
    assert {"resnet18", "mobilenet_v2", "mit_b0"} <= set(catalog["encoders"])
