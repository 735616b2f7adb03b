"""BiGAN: its networks' shapes and its two-optimiser step in the trainer."""

import pytest
import torch

from fastssl import AugmentSpec, MonoSource
from fastssl.data.adapters import MonoData
from fastssl.methods import build_method
from fastssl.models.bigan import Generator, JointDiscriminator
from fastssl.train import TrainConfig, Trainer, load_checkpoint

MODEL = dict(small=True, input_res=16, width=0.1, fc_width=32)
GAN = dict(z_dim=8, g_width=8, d_width=8)


def test_generator_and_discriminator_shapes_and_ranges():
    torch.manual_seed(0)
    for res in (16, 32, 64):
        g, d = Generator(8, res, 8), JointDiscriminator(8, res, 8)
        x = g(torch.rand(5, 8) * 2 - 1)
        assert x.shape == (5, 3, res, res) and x.min() >= 0 and x.max() <= 255
        assert d(x, torch.rand(5, 8)).shape == (5,)
        assert d(torch.randint(0, 256, (5, 3, res, res), dtype=torch.uint8), torch.rand(5, 8)).shape == (5,)
    with pytest.raises(ValueError, match="power-of-two resolution"):
        Generator(8, 24)


class _Ctx:
    """Steps one optimiser per call, and remembers which networks each call changed."""

    def __init__(self, m):
        self.m = m
        self.opts = {k: torch.optim.Adam(v, lr=1e-2) for k, v in m.param_groups().items()}
        self.changed = []

    def autocast(self):
        return torch.autocast("cpu", enabled=False)

    def step(self, loss, name):
        before = {k: [p.detach().clone() for p in n.parameters()] for k, n in self.m.nets.items()}
        self.opts[name].zero_grad()
        loss.backward()
        self.opts[name].step()
        moved = {
            k
            for k, n in self.m.nets.items()
            if any(not torch.equal(a, b) for a, b in zip(before[k], n.parameters(), strict=True))
        }
        self.changed.append((name, moved))


def test_each_optimiser_moves_only_its_own_networks():
    torch.manual_seed(0)
    m = build_method("bigan", MODEL, method_kw=GAN)
    ctx = _Ctx(m)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    out = m.train_step((x, None), ctx)
    assert ctx.changed == [("d", {"discriminator"}), ("ge", {"generator", "model"})]
    assert set(out) == {"loss_d", "loss_ge", "d_acc", "d_skipped"} and out["d_skipped"] == 0.0
    # a discriminator above its d_skip_above accuracy sits the step out
    skipper = build_method("bigan", MODEL, method_kw={**GAN, "d_skip_above": -0.5})
    ctx2 = _Ctx(skipper)
    assert skipper.train_step((x, None), ctx2)["d_skipped"] == 1.0
    assert ctx2.changed == [("ge", {"generator", "model"})]
    # the probes read the encoder: an AlexNet whose head gives the latent code
    assert m.trunk() is m.nets["model"] and m.arch()["num_classes"] == GAN["z_dim"]


def _cfg(**kw):
    cfg = TrainConfig(
        **{**dict(epochs=2, batch_size=16, amp="off", compile="off", device="cpu", log_every=2, progress=False), **kw}
    )
    cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay = "adam", 2e-4, 0.0
    return cfg


def _data():
    return MonoData(MonoSource(None, AugmentSpec(size=16), batch_size=16, epoch_length=64))


def test_bigan_trains_and_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    full = build_method("bigan", MODEL, method_kw=GAN)
    assert Trainer(full, _data(), _cfg(), tmp_path / "a").fit() == "done"
    ck = load_checkpoint(tmp_path / "a" / "ckpt.pt")
    assert set(ck["nets"]) == {"model", "generator", "discriminator"} and set(ck["optims"]) == {"d", "ge"}

    torch.manual_seed(0)
    m = build_method("bigan", MODEL, method_kw=GAN)
    t = Trainer(m, _data(), _cfg(ckpt_every=3), tmp_path / "b")
    orig = m.train_step

    class Stop(Exception):
        pass

    def step(batch, ctx):
        if t.global_step == 5:
            raise Stop
        return orig(batch, ctx)

    m.train_step = step
    with pytest.raises(Stop):
        t.fit()
    assert load_checkpoint(tmp_path / "b" / "ckpt.pt")["global_step"] == 4  # epoch end (4 steps per epoch)
    torch.manual_seed(0)
    resumed = build_method("bigan", MODEL, method_kw=GAN)
    Trainer(resumed, _data(), _cfg(resume=True), tmp_path / "b").fit()
    for k in ("model", "generator", "discriminator"):
        for (name, a), b in zip(full.nets[k].state_dict().items(), resumed.nets[k].state_dict().values(), strict=True):
            assert torch.equal(a, b), (k, name)


def test_discriminator_normalises_real_and_generated_groups_apart():
    """groups=2: one forward pass whose BatchNorm sees the real half and the generated half
    each alone, as two separate passes would; normalised together they differ."""
    torch.manual_seed(0)
    d = JointDiscriminator(8, 16, width=8).train()
    real = torch.rand(6, 3, 16, 16) * 255
    fake = torch.rand(6, 3, 16, 16) * 60  # darker: batch statistics that differ from the real half
    z = torch.rand(12, 8) * 2 - 1
    both = d(torch.cat([real, fake]), z, groups=2)
    apart = torch.cat([d(real, z[:6]), d(fake, z[6:])])
    torch.testing.assert_close(both, apart, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(d(torch.cat([real, fake]), z), apart, atol=1e-3)


def test_discriminator_without_norm_has_no_batchnorm_and_drops_its_inputs():
    d = JointDiscriminator(8, 16, width=8, norm=False, input_dropout=0.5).train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    x, z = torch.rand(4, 3, 16, 16) * 255, torch.rand(4, 8) * 2 - 1
    torch.manual_seed(1)
    a = d(x, z)
    torch.manual_seed(2)
    assert not torch.equal(a, d(x, z))  # dropout on the inputs: two draws differ
    d.eval()
    assert torch.equal(d(x, z), d(x, z))


@pytest.mark.parametrize("code", ["tanh", "uniform"])
def test_bounded_codes_lie_in_the_prior_interval(code, bare_ctx):
    """The encoder's code as the discriminator sees it: inside (-1, 1); 'uniform' has the
    U(-1, 1) prior's spread (std 1/sqrt(3)) per dimension."""
    torch.manual_seed(0)
    m = build_method("bigan", MODEL, None, {"z_dim": 4, "code": code}, 0)
    seen = {}
    real_d = m.nets["discriminator"].forward

    def spy(x, z, groups=1):
        seen["z"] = z.detach()
        return real_d(x, z, groups)

    m.nets["discriminator"].forward = spy

    x = (torch.rand(256, 3, 16, 16) * 255).to(torch.uint8)
    m.train_step((x, None), bare_ctx)
    code_half = seen["z"][:256]
    assert code_half.abs().max() < 1
    if code == "uniform":
        assert abs(float(code_half.std()) - 3**-0.5) < 0.05


@pytest.mark.parametrize("inject", [False, True])
def test_injected_code_reaches_the_image_branch(inject):
    """With the code's direct way into the last MLP cut, the logit depends on the code only
    when it is injected into the convolutions; one pass with groups=2 still equals two."""
    torch.manual_seed(0)
    d = JointDiscriminator(8, 16, width=8, inject=inject).train()
    with torch.no_grad():
        d.joint[0].weight[:, -512:] = 0  # the code's hidden layer no longer feeds the joint MLP
    x = torch.rand(6, 3, 16, 16) * 255
    z1, z2 = torch.rand(6, 8) * 2 - 1, torch.rand(6, 8) * 2 - 1
    assert torch.allclose(d(x, z1), d(x, z2)) is not inject
    both = d(torch.cat([x, x * 0.3]), torch.cat([z1, z2]), groups=2)
    torch.testing.assert_close(both, torch.cat([d(x, z1), d(x * 0.3, z2)]), rtol=1e-4, atol=1e-5)
    assert (d.inject is not None) is inject
    if inject:
        d(x, z1).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.inject.parameters())


def test_bigan_setting_turns_the_injection_on():
    m = build_method("bigan", MODEL, None, {"z_dim": 4, "d_inject_z": True}, 0)
    assert len(m.nets["discriminator"].inject) == 1  # 16 px: two convolutions, the second injected


def test_injection_leaves_the_other_initial_weights_alone():
    """Off, the discriminator is the one it was before the option (same draws from the seed);
    on, every other layer starts from the same weights."""
    torch.manual_seed(0)
    off = JointDiscriminator(8, 16, width=8)
    later = torch.nn.Linear(512, 16)  # drawn right after `off`: what `on` draws for its injection
    torch.manual_seed(0)
    on = JointDiscriminator(8, 16, width=8, inject=True)
    assert not any(k.startswith("inject") for k in off.state_dict())
    for k, v in off.state_dict().items():
        assert torch.equal(v, on.state_dict()[k]), k
    torch.testing.assert_close(later.weight, on.inject[0].weight, rtol=0, atol=0)


def test_without_injection_dropout_draws_come_in_their_old_order():
    """Off, the image branch draws its dropout masks before the code's, so a seeded run with
    dropout repeats the runs made before the option."""
    d = JointDiscriminator(8, 16, width=8, dropout=0.3, input_dropout=0.2).train()
    x, z = torch.rand(4, 3, 16, 16) * 255, torch.rand(4, 8) * 2 - 1
    torch.manual_seed(3)
    got = d(x, z)
    torch.manual_seed(3)
    h = d.image(d.input_dropout(x / 127.5 - 1.0))
    want = d.joint(torch.cat([h, d.code(d.input_dropout(z))], 1)).squeeze(1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
