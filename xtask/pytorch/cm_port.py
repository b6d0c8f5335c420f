"""A PyTorch port of cm-rs's CPU U-Net and of its EDM and CD training steps,
for `cargo xtask bench --vs-pytorch` (the side-by-side of docs/benchmarks.md).

The port is faithful, not merely similar: it builds the same modules under the
same names as `cm-nets`' `UNet` (crates/cm-nets/src/unet.rs), loads the very
weights the Rust worker writes (safetensors), and refuses to time anything
unless its forward pass matches the Rust output on the same input (max abs
difference printed, 1e-4 allowed). The training steps follow cm-train and
cm-distill op for op: EDM loss (Karras et al. 2022, Table 1), Adam with global
gradient-norm clipping, EMA by lerp; CD with a Heun teacher step over the
Karras training grid, the boundary-condition parameterization, pseudo-Huber
distance, target EMA and the shared dropout seed (Song et al. 2023, Alg. 2).
It is written as a PyTorch user would write it (torch.optim.Adam,
clip_grad_norm_, torch.no_grad), without tricks either way.

Worker protocol (one JSON object per line on stdin and stdout):
  {"cmd": "setup", "weights": PATH, "io": PATH, "threads": N}
      (the network's config is read from the weights' `cm_rs.net` metadata)
      -> {"ok": true, "max_abs_diff": D, "params": P}
  {"cmd": "run", "row": NAME, "reps": K}  -> {"ms": [t1, ..., tK]}
  {"cmd": "quit"}
"""

import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def group_count(channels):
    groups = max(1, min(32, channels // 4))
    while channels % groups != 0:
        groups -= 1
    return groups


def group_norm(channels):
    return nn.GroupNorm(group_count(channels), channels, eps=1e-5)


def conv(cin, cout, k):
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class SelfAttention(nn.Module):
    def __init__(self, channels, heads):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = conv(channels, 3 * channels, 1)
        self.proj = conv(channels, channels, 1)
        self.heads = heads

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x))
        qkv = qkv.reshape(b, 3, self.heads, c // self.heads, h * w).permute(1, 0, 2, 4, 3)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        out = out.permute(0, 1, 3, 2).reshape(b, c, h, w)
        return self.proj(out)


def resample(x, scale):
    if scale == "down":
        return F.avg_pool2d(x, 2, 2)
    if scale == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return x


class UNetBlock(nn.Module):
    def __init__(self, cin, cout, emb, scale, attention, cfg):
        super().__init__()
        self.norm0 = group_norm(cin)
        self.conv0 = conv(cin, cout, 3)
        self.affine = nn.Linear(emb, 2 * cout if cfg["scale_shift"] else cout)
        self.norm1 = group_norm(cout)
        self.conv1 = conv(cout, cout, 3)
        self.skip = conv(cin, cout, 1) if cin != cout else None
        heads = max(1, cout // cfg["channels_per_head"])
        self.attn = SelfAttention(cout, heads) if attention else None
        self.scale = scale
        self.in_channels = cin
        self.dropout = cfg["dropout"]
        self.skip_scale = cfg["skip_scale"]
        self.scale_shift = cfg["scale_shift"]

    def forward(self, x, emb):
        h = self.conv0(resample(F.silu(self.norm0(x)), self.scale))
        params = self.affine(emb).unsqueeze(-1).unsqueeze(-1)
        if self.scale_shift:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + params))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        skip = resample(x, self.scale)
        if self.skip is not None:
            skip = self.skip(skip)
        out = (h + skip) * self.skip_scale
        if self.attn is not None:
            out = (self.attn(out) + out) * self.skip_scale
        return out


class UNet(nn.Module):
    """cm-nets' UNet (filter resampling, positional noise embedding,
    unconditional), module names identical to the Rust VarStore paths."""

    def __init__(self, cfg):
        super().__init__()
        mc = cfg["model_channels"]
        emb = mc * cfg["emb_mult"]
        res0 = cfg["resolution"]
        half = mc // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) / half * math.log(1.0 / 10000.0))
        self.register_buffer("map_noise_freqs", freqs)
        self.map_layer0 = nn.Linear(mc, emb)
        self.map_layer1 = nn.Linear(emb, emb)
        self.enc = nn.ModuleDict()
        self.enc["conv_in"] = conv(cfg["in_channels"], mc, 3)
        attn_at = lambda r: r in cfg["attn_resolutions"]
        skips = [mc]
        cout = mc
        enc_order = []
        for level, mult in enumerate(cfg["channel_mult"]):
            res = res0 >> level
            if level > 0:
                name = f"{res}x{res}_down"
                self.enc[name] = UNetBlock(cout, cout, emb, "down", False, cfg)
                enc_order.append(name)
                skips.append(cout)
            for idx in range(cfg["num_res_blocks"]):
                cin, cout = cout, mc * mult
                name = f"{res}x{res}_block{idx}"
                self.enc[name] = UNetBlock(cin, cout, emb, "same", attn_at(res), cfg)
                enc_order.append(name)
                skips.append(cout)
        self.dec = nn.ModuleDict()
        dec_order = []
        levels = len(cfg["channel_mult"])
        for level in reversed(range(levels)):
            mult = cfg["channel_mult"][level]
            res = res0 >> level
            if level == levels - 1:
                for name, attn in [(f"{res}x{res}_in0", True), (f"{res}x{res}_in1", False)]:
                    self.dec[name] = UNetBlock(cout, cout, emb, "same", attn, cfg)
                    dec_order.append(name)
            else:
                name = f"{res}x{res}_up"
                self.dec[name] = UNetBlock(cout, cout, emb, "up", False, cfg)
                dec_order.append(name)
            for idx in range(cfg["num_res_blocks"] + 1):
                cin, cout = cout + skips.pop(), mc * mult
                name = f"{res}x{res}_block{idx}"
                self.dec[name] = UNetBlock(cin, cout, emb, "same", attn_at(res), cfg)
                dec_order.append(name)
        self.dec["out_norm"] = group_norm(cout)
        self.dec["out_conv"] = conv(cout, cfg["in_channels"], 3)
        self.enc_order = enc_order
        self.dec_order = dec_order

    def forward(self, x, c_noise):
        e = c_noise.to(torch.float32).outer(self.map_noise_freqs)
        e = torch.cat([e.cos(), e.sin()], dim=1)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(e))))
        h = self.enc["conv_in"](x)
        skips = [h]
        for name in self.enc_order:
            h = self.enc[name](h, emb)
            skips.append(h)
        for name in self.dec_order:
            block = self.dec[name]
            if h.shape[1] != block.in_channels:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        return self.dec["out_conv"](F.silu(self.dec["out_norm"](h)))


def rust_name(name):
    # VarStore path of a PyTorch parameter: the noise frequencies live at
    # map_noise.freqs; GroupNorm and Linear/Conv names already agree.
    return "map_noise.freqs" if name == "map_noise_freqs" else name


def load_weights(model, path):
    from safetensors.torch import load_file

    tensors = load_file(path)
    state = model.state_dict()
    missing = [n for n in state if rust_name(n) not in tensors]
    extra = set(tensors) - {rust_name(n) for n in state}
    if missing or extra:
        raise SystemExit(f"port: weights do not match: missing {missing[:5]}, extra {sorted(extra)[:5]}")
    model.load_state_dict({n: tensors[rust_name(n)] for n in state})


# --- preconditioning and objectives (cm-core, cm-train, cm-distill) -------

SIGMA_DATA, SIGMA_MIN, SIGMA_MAX, RHO = 0.5, 0.002, 80.0, 7.0
P_MEAN, P_STD = -1.2, 1.2


def append_dims(t, ndim):
    return t.reshape(t.shape + (1,) * (ndim - t.dim()))


def edm_denoise(net, x, sigma):
    s = append_dims(sigma, x.dim())
    s2 = s.square() + SIGMA_DATA**2
    c_skip = SIGMA_DATA**2 / s2
    c_out = s * s2.rsqrt() * SIGMA_DATA
    c_in = s2.rsqrt()
    return c_skip * x + c_out * net(c_in * x, sigma.log() * 0.25)


def cm_denoise(net, x, sigma):
    s = append_dims(sigma, x.dim())
    shifted = s - SIGMA_MIN
    c_skip = SIGMA_DATA**2 / (shifted.square() + SIGMA_DATA**2)
    c_out = shifted * SIGMA_DATA * (s.square() + SIGMA_DATA**2).rsqrt()
    c_in = (s.square() + SIGMA_DATA**2).rsqrt()
    return c_skip * x + c_out * net(c_in * x, sigma.log() * 0.25)


def karras_training_sigmas(n):
    a, b = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    s = [(a + i / (n - 1) * (b - a)) ** RHO for i in range(n)]
    s[0], s[-1] = SIGMA_MIN, SIGMA_MAX
    return torch.tensor(s, dtype=torch.float32)


def heun_step(teacher, x, t_cur, t_next):
    dt = append_dims(t_next - t_cur, x.dim())
    d = (x - edm_denoise(teacher, x, t_cur)) / append_dims(t_cur, x.dim())
    euler = x + dt * d
    d_next = (euler - edm_denoise(teacher, euler, t_next)) / append_dims(t_next, x.dim())
    return x + dt * (d + d_next) * 0.5


def pseudo_huber(a, b, c):
    s = (a - b).square().flatten(1).sum(1)
    return s / ((s + c * c).sqrt() + c)


class Trainer:
    """Adam (lr, betas 0.9/0.999, eps 1e-8) over the online network, global
    gradient-norm clipping at 1, an evaluation EMA of rate 0.999."""

    def __init__(self, online, lr):
        self.online = online
        self.opt = torch.optim.Adam(online.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
        self.ema = [p.detach().clone() for p in online.parameters()]

    def step(self, loss):
        self.opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.online.parameters(), 1.0)
        self.opt.step()
        with torch.no_grad():
            for e, p in zip(self.ema, self.online.parameters()):
                e.lerp_(p, 1 - 0.999)


def read_config(weights):
    from safetensors import safe_open

    with safe_open(weights, "pt") as f:
        cfg = json.loads(f.metadata()["cm_rs.net"])
    supported = {"arch": "unet", "resample": "filter", "noise_embedding": "positional", "num_classes": 0}
    for key, value in supported.items():
        if cfg.get(key) != value:
            raise SystemExit(f"port: {key} = {cfg.get(key)!r} is not ported (only {value!r})")
    return cfg


def make_rows(weights):
    cfg = read_config(weights)

    def fresh():
        m = UNet(cfg)
        load_weights(m, weights)
        # As cm-nets' Model::new: 4-D weights channels-last, so libtorch runs
        # the convolutions in NHWC (the same kernels on both sides).
        return m.to(memory_format=torch.channels_last)

    net = fresh().eval()
    shape = (cfg["in_channels"], cfg["resolution"], cfg["resolution"])
    x1, x64 = torch.randn(1, *shape), torch.randn(64, *shape)
    s1, s64 = torch.randn(1).exp(), torch.randn(64).exp()
    data = torch.rand(64, *shape) * 2 - 1

    def forward(x, s):
        def run():
            with torch.no_grad():
                net(x, s)
        return run

    train_net = fresh().train()

    def fwd_bwd():
        train_net.zero_grad(set_to_none=False)
        train_net(x64, s64.log() * 0.25).mean().backward()

    edm_online = fresh().train()
    edm = Trainer(edm_online, 4e-4)

    def edm_step():
        sigma = (torch.randn(64) * P_STD + P_MEAN).exp()
        noisy = data + torch.randn_like(data) * append_dims(sigma, 4)
        denoised = edm_denoise(edm_online, noisy, sigma)
        per_example = (denoised - data).square().flatten(1).mean(1)
        weight = (sigma.square() + SIGMA_DATA**2) / (sigma.square() * SIGMA_DATA**2)
        edm.step((weight * per_example).mean())

    teacher = fresh().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    cd_online = fresh().train()
    target = fresh().train()
    for p in target.parameters():
        p.requires_grad_(False)
    cd = Trainer(cd_online, 2e-4)
    grid = karras_training_sigmas(18)
    c = 0.00054 * math.sqrt(shape[0] * shape[1] * shape[2])

    def cd_step():
        index = torch.randint(0, len(grid) - 1, (64,))
        t_n, t_next = grid[index], grid[index + 1]
        x_next = data + torch.randn_like(data) * append_dims(t_next, 4)
        with torch.no_grad():
            x_hat = heun_step(teacher, x_next, t_next, t_n)
        seed = int(torch.randint(2**62, (1,)))
        torch.manual_seed(seed)
        pred = cm_denoise(cd_online, x_next, t_next)
        torch.manual_seed(seed)
        with torch.no_grad():
            tgt = cm_denoise(target, x_hat, t_n)
        cd.step(pseudo_huber(pred, tgt, c).mean())
        with torch.no_grad():
            for t, p in zip(target.parameters(), cd_online.parameters()):
                t.lerp_(p, 1 - 0.95)

    def one_step(n):
        z = torch.randn(n, *shape)

        def run():
            with torch.no_grad():
                x = z * SIGMA_MAX
                cm_denoise(net, x, torch.full((n,), SIGMA_MAX)).clamp(-1, 1)
        return run

    return {
        "forward_b1": forward(x1, s1),
        "forward_b64": forward(x64, s64),
        "forward_backward_b64": fwd_bwd,
        "edm_step_b64": edm_step,
        "cd_step_b64": cd_step,
        "sample_1step_b1": one_step(1),
        "sample_1step_b64": one_step(64),
    }, net


def main():
    rows, net = None, None
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "setup":
            torch.set_num_threads(msg["threads"])
            torch.manual_seed(0)
            rows, net = make_rows(msg["weights"])
            from safetensors.torch import load_file

            io = load_file(msg["io"])
            with torch.no_grad():
                y = net(io["x"], io["c_noise"])
            diff = float((y - io["y"]).abs().max())
            params = sum(p.numel() for p in net.parameters())
            reply = {"ok": diff <= 1e-4, "max_abs_diff": diff, "params": params,
                     "torch": torch.__version__, "threads": torch.get_num_threads()}
        elif msg["cmd"] == "run":
            fn = rows[msg["row"]]
            times = []
            for _ in range(msg["reps"]):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
            reply = {"ms": times}
        elif msg["cmd"] == "quit":
            return
        else:
            reply = {"error": f"unknown command {msg['cmd']}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
