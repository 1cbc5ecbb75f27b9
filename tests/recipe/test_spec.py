"""Every constraint of the recipe language, through the loader: what is refused, what it says, what is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipec.errors import RecipeError
from recipec.recipe import Recipe, load_recipe
from recipec.recipe.spec import parse_size

BAD_REGEX = "'(' is not a valid regular expression: missing ), unterminated subpattern at position 0"
NOT_MLP = "only applies to type: mlp (this head is type: linear); remove it or set type: mlp"
NEVER_STARTS = "never starts (train.epochs is 2; epochs count from 0)"

# (overrides, problems after "--set <the override that wrote the value>: ")
REFUSED: list[tuple[str, str]] = [
    # recipe
    ("name=-x", "name: must start with a letter or digit and hold only letters, digits, '.', '_' and '-', got '-x'"),
    ("name=null", "name: must be text, got null"),
    ("seed=-1", "seed: must be >= 0, got -1"),
    ("device=gpu", "device: must be auto, cpu, cuda, cuda:N (e.g. cuda:1) or mps, got 'gpu'"),
    ("device=cuda:x", "device: must be auto, cpu, cuda, cuda:N (e.g. cuda:1) or mps, got 'cuda:x'"),
    # model
    ("model.arch=my-net", ("model.arch: unknown architecture 'my-net' (model.arch is a torchvision classification "
                          "model (resnet18, vit_b_16, ...), timm/<name> for a timm model (timm/convnext_tiny), "
                          "hf/<repo id or folder> for a transformers model (hf/facebook/dinov2-small), or "
                          "package.module:factory for your own)")),
    ("model.weights=IMAGENET1K-V1", ("model.weights: must be a weights name such as IMAGENET1K_V1 or DEFAULT, or null, "
                                    "got 'IMAGENET1K-V1'")),
    ("model.in_channels=0", "model.in_channels: must be >= 1, got 0"),
    ("model.kwargs=[1]", "model.kwargs: must be a mapping (key: value), got [1]"),
    # head
    ("model.head={num_classes: 0}", "model.head.num_classes: must be >= 1, got 0"),
    ("model.head={type: mlp}", "model.head.num_classes: missing (required), e.g. num_classes: 5"),
    ("model.head={num_classes: 2, type: conv}", "model.head.type: must be one of linear, mlp, got 'conv'"),
    ("model.head={num_classes: 2, type: mlp, hidden: [0]}", "model.head.hidden.0: must be >= 1, got 0"),
    ("model.head={num_classes: 2, type: mlp, hidden: []}",
     "model.head.hidden: an mlp head needs at least one hidden size, e.g. hidden: [512]"),
    ("model.head={num_classes: 2, dropout: -0.1}", "model.head.dropout: must be >= 0, got -0.1"),
    ("model.head={num_classes: 2, dropout: 1}", "model.head.dropout: must be < 1, got 1"),
    ("model.head={num_classes: 2, type: mlp, activation: tanh}",
     "model.head.activation: must be one of relu, gelu, silu, got 'tanh'"),
    ("model.head={num_classes: 2, at: fc/x}", ("model.head.at: must be a dotted module path such as fc or classifier.6, "
                                              "got 'fc/x'")),
    ("model.head={num_classes: 2, hidden: [8]}", f"model.head.hidden: {NOT_MLP}"),
    ("model.head={num_classes: 2, activation: gelu}", f"model.head.activation: {NOT_MLP}"),
    # source
    ("source={checkpoint: a.pt, recipe: b.yaml}", "source.recipe: set either checkpoint or recipe, not both"),
    ("source={}", "source: needs checkpoint (a file) or recipe (an upstream recipe)"),
    ("source={checkpoint: a.pt, sha256: abc}", "source.sha256: must be 64 hexadecimal digits, got 'abc'"),
    ("source={checkpoint: a.pt, rename: [['(', '']]}", f"source.rename.0.0: {BAD_REGEX}"),
    ("source={checkpoint: a.pt, rename: [[a]]}", 'source.rename.0: must have 2 items, got ["a"]'),
    ("source={checkpoint: a.pt, include: ['(']}", f"source.include.0: {BAD_REGEX}"),
    ("source={checkpoint: a.pt, exclude: [x, '(']}", f"source.exclude.1: {BAD_REGEX}"),
    ("source={checkpoint: a.pt, exclude: ['a{4294967296}']}",
     "source.exclude.0: 'a{4294967296}' is not a valid regular expression: the repetition number is too large"),
    ("source={checkpoint: a.pt, adapt: [{match: x, rule: flip}]}",
     "source.adapt.0.rule: must be one of input_channels, truncate_pad, class_subset, pos_embed, reshape, got 'flip'"),
    ("source={checkpoint: a.pt, adapt: [{match: x}]}",
     "source.adapt.0.match: a shape rule needs rule: input_channels, truncate_pad, class_subset, pos_embed or reshape"),
    ("source={checkpoint: a.pt, adapt: [{rule: reshape}]}",
     "source.adapt.0: needs match and rule (a shape rule), fuse and into, or split and into"),
    ("source={checkpoint: a.pt, adapt: [{match: x, rule: reshape, fuse: [a, b], into: c}]}",
     "source.adapt.0.fuse: one rule per item: match and fuse cannot go together; write them as separate items"),
    ("source={checkpoint: a.pt, adapt: [{fuse: ['(.*)q', '\\2k'], into: '\\1qk'}]}",
     "source.adapt.0.fuse.1: template '\\\\2k' is not valid for '(.*)q': invalid group reference 2 at position 1"),
    ("source={checkpoint: a.pt, adapt: [{fuse: ['(.*)q']}]}", "source.adapt.0.fuse: must have at least 2 items, got 1"),
    ("source={checkpoint: a.pt, adapt: [{fuse: ['(.*)q', '\\1k'], into: ['a', 'b']}]}",
     "source.adapt.0.into: a fuse needs into: the template of the fused key, e.g. '\\1.qkv.\\2'"),
    ("source={checkpoint: a.pt, adapt: [{split: 'x', into: 'y'}]}",
     "source.adapt.0.into: a split needs into: a list of two or more templates of the parts' keys"),
    ("source={checkpoint: a.pt, adapt: [{split: 'x', into: [a, b], sizes: [1]}]}",
     "source.adapt.0.sizes: needs one size per part of into (2), got 1"),
    ("source={checkpoint: a.pt, adapt: [{match: x, rule: reshape, dim: 1}]}",
     "source.adapt.0.dim: only applies to fuse and split rules"),
    ("source={checkpoint: a.pt, adapt: [{fuse: [a, b], into: c, sizes: [1, 1]}]}",
     "source.adapt.0.sizes: does not apply to a fuse rule (only dim, fuse, into)"),
    ("source={checkpoint: a.pt, preset: hf_vit}", "source.preset: must be one of hf_vit_to_timm, hf_dinov2_to_timm, "
     "hf_clip_vision_to_timm, hf_convnext_to_timm, hf_vit_to_torchvision, timm_resnet_to_torchvision, "
     "torchvision_resnet_to_timm, got 'hf_vit'; did you mean 'hf_vit_to_timm'?"),
    ("source={checkpoint: a.pt, adapt: [{match: '(', rule: input_channels}]}", f"source.adapt.0.match: {BAD_REGEX}"),
    ("source={checkpoint: a.pt, adapt: [{match: x, rule: class_subset}]}",
     "source.adapt.0.rule: class_subset needs indices: the source classes to keep, e.g. indices: [0, 3, 7]"),
    ("source={checkpoint: a.pt, adapt: [{match: x, rule: truncate_pad, indices: [1]}]}",
     "source.adapt.0.indices: only applies to rule class_subset (this rule is truncate_pad)"),
    ("source={checkpoint: a.pt, adapt: [{match: x, rule: class_subset, indices: [-1]}]}",
     "source.adapt.0.indices.0: must be >= 0, got -1"),
    ("source={checkpoint: a.pt, on_mismatch: warn}", "source.on_mismatch: must be one of error, skip, got 'warn'"),
    ("source={checkpoint: a.pt, require_all: maybe}", "source.require_all: must be true or false, got 'maybe'"),
    ("source={checkpoint: a.pt, allow_globals: [os system]}",
     "source.allow_globals.0: must be a dotted global name such as argparse.Namespace, got 'os system'"),
    # groups and freezing
    ("groups=[{name: 1x, match: [a]}]", ("groups.0.name: must start with a letter or '_' and hold only letters, digits, "
                                        "'.', '_' and '-', got '1x'")),
    ("groups=[{name: a, match: []}]", "groups.0.match: must have at least 1 item, got 0"),
    ("groups=[{name: a, match: ['(']}]", f"groups.0.match.0: {BAD_REGEX}"),
    ("groups=[{name: b, match: [x]}, {name: b, match: [y]}]", "groups.1.name: group 'b' is named twice"),
    ("freeze.trainable=[neck]", "freeze.trainable.0: unknown group 'neck' (groups are a, b)"),
    ("freeze.unfreeze={1: [a, neck]}", "freeze.unfreeze.1.1: unknown group 'neck' (groups are a, b)"),
    ("freeze.unfreeze={-1: [a]}", "freeze.unfreeze.-1: key must be >= 0, got -1"),
    ("freeze.unfreeze.2=[a]", f"freeze.unfreeze.2: epoch 2 {NEVER_STARTS}"),
    ("freeze.gradual={every: 0}", "freeze.gradual.every: must be >= 1, got 0"),
    ("freeze.gradual={start: -1}", "freeze.gradual.start: must be >= 0, got -1"),
    ("freeze.gradual={start: 2}", f"freeze.gradual.start: epoch 2 {NEVER_STARTS}"),
    ("freeze.batchnorm=eval", "freeze.batchnorm: must be one of frozen, train, got 'eval'"),
    # optimizer and schedulers
    ("optimizer.name=lamb", "optimizer.name: must be one of adamw, adam, sgd, got 'lamb'"),
    ("optimizer.lr=0", "optimizer.lr: must be > 0, got 0"),
    ("optimizer.lr_decay=0.5", "optimizer.lr_decay: must be >= 1, got 0.5"),
    ("optimizer.group_lr={a: 0}", "optimizer.group_lr.a: must be > 0, got 0"),
    ("optimizer.group_lr={neck: 0.1}", "optimizer.group_lr.neck: unknown group 'neck' (groups are a, b)"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay: must be >= 0, got -1"),
    ("optimizer.no_weight_decay=[bias, '(']", f"optimizer.no_weight_decay.1: {BAD_REGEX}"),
    ("optimizer.momentum=1", "optimizer.momentum: must be < 1, got 1"),
    ("optimizer.momentum=-0.5", "optimizer.momentum: must be >= 0, got -0.5"),
    ("optimizer.nesterov=2", "optimizer.nesterov: must be true or false, got 2"),
    ("optimizer.betas=[1, 0.9]", "optimizer.betas.0: must be < 1, got 1"),
    ("optimizer.betas=[0.9, -0.1]", "optimizer.betas.1: must be >= 0, got -0.1"),
    ("optimizer.betas=[0.9, 0.9, 0.9]", "optimizer.betas: must have at most 2 items, got 3"),
    ("optimizer.scheduler={name: cosine, warmup_epochs: -1}", "optimizer.scheduler.warmup_epochs: must be >= 0, got -1"),
    ("optimizer.scheduler={name: cosine, min_factor: 1.5}", "optimizer.scheduler.min_factor: must be <= 1, got 1.5"),
    ("optimizer.scheduler={name: cosine, min_factor: -0.1}", "optimizer.scheduler.min_factor: must be >= 0, got -0.1"),
    ("optimizer.scheduler={name: step, step_epochs: 0}", "optimizer.scheduler.step_epochs: must be >= 1, got 0"),
    ("optimizer.scheduler={name: step, step_epochs: 1, gamma: 0}", "optimizer.scheduler.gamma: must be > 0, got 0"),
    ("optimizer.scheduler={name: step, step_epochs: 1, gamma: 1.5}", "optimizer.scheduler.gamma: must be <= 1, got 1.5"),
    ("optimizer.scheduler={name: step, step_epochs: 1, warmup_epochs: -2}",
     "optimizer.scheduler.warmup_epochs: must be >= 0, got -2"),
    ("optimizer.scheduler={name: onecycle, pct_start: 0}", "optimizer.scheduler.pct_start: must be > 0, got 0"),
    ("optimizer.scheduler={name: onecycle, pct_start: 1}", "optimizer.scheduler.pct_start: must be < 1, got 1"),
    ("optimizer.scheduler={name: onecycle, div_factor: 0.5}", "optimizer.scheduler.div_factor: must be >= 1, got 0.5"),
    ("optimizer.scheduler={name: onecycle, final_div_factor: 0.5}",
     "optimizer.scheduler.final_div_factor: must be >= 1, got 0.5"),
    ("optimizer.scheduler={name: onecycle, warmup_epochs: 1}",
     "optimizer.scheduler.warmup_epochs: unknown key 'warmup_epochs'"),
    ("optimizer.scheduler={name: linear}",
     "optimizer.scheduler.name: must be one of none, cosine, step, onecycle, got 'linear'"),
    ("optimizer.scheduler=cosine", "optimizer.scheduler: must be a mapping (key: value), got 'cosine'"),
    # data
    ("data.dataset=imagenet", ("data.dataset: must be one of imagefolder, manifest, digits, fake, cifar10, cifar100, mnist, "
                              "fashionmnist, got 'imagenet'; did you mean 'imagefolder'?")),
    ("data.dataset=cifar10", "data.dataset: cifar10 needs root: the directory that holds it"),
    ("data.classes=[]", "data.classes: must have at least 1 item, got 0"),
    ("data.per_class=0", "data.per_class: must be >= 1, got 0"),
    ("data.val_fraction=1", "data.val_fraction: must be < 1, got 1"),
    ("data.val_fraction=-0.1", "data.val_fraction: must be >= 0, got -0.1"),
    ("data.image_size=7", "data.image_size: must be >= 8, got 7"),
    ("data.normalize=imagenet21k", "data.normalize: must be one of from_weights, imagenet, none, got 'imagenet21k'; did you mean 'imagenet'?"),
    ("data.augment=[hflip, flip]", ("data.augment.1: must be one of hflip, vflip, random_crop, random_resized_crop, "
                                   "color_jitter, rotate, randaugment, trivialaugment, augmix, autoaugment, "
                                   "random_erasing, got 'flip'; did you mean 'vflip'?")),
    ("data.batch_size=0", "data.batch_size: must be >= 1, got 0"),
    ("data.num_workers=-1", "data.num_workers: must be >= 0, got -1"),
    # train
    ("train.epochs=0", "train.epochs: must be >= 1, got 0"),
    ("train.amp=fp8", "train.amp: must be one of none, bf16, fp16, got 'fp8'"),
    ("train.grad_clip=0", "train.grad_clip: must be > 0, got 0"),
    ("train.accumulate=0", "train.accumulate: must be >= 1, got 0"),
    ("train.feature_cache=always", "train.feature_cache: must be one of auto, off, got 'always'"),
    ("train.feature_cache=on", "train.feature_cache: must be one of auto, off, got 'on'"),
    ("train.checkpoint_every=0", "train.checkpoint_every: must be >= 1, got 0"),
    ("train.keep_last=0", "train.keep_last: must be >= 1, got 0"),
    ("train.early_stopping={metric: acc}", ("train.early_stopping.metric: must be one of val_acc, val_loss, val_map, "
                                           "val_f1_micro, val_f1_macro, got 'acc'; did you mean 'val_acc'?")),
    ("train.early_stopping={patience: 0}", "train.early_stopping.patience: must be >= 1, got 0"),
    ("train.early_stopping={min_delta: -1}", "train.early_stopping.min_delta: must be >= 0, got -1"),
    # export and card
    ("export.formats=[tflite]", "export.formats.0: must be one of safetensors, torch, onnx, pt2, hub, got 'tflite'"),
    ("export.formats=[onnx, torch, onnx]", "export.formats: format listed twice: onnx"),
    ("export.dtype=int8", "export.dtype: must be one of float32, float16, bfloat16, got 'int8'"),
    ("export.shard_size=2XB", "export.shard_size: '2XB' is not a size; write e.g. 2GB, 500MB, 512MiB or a byte count"),
    ("export.shard_size=0", "export.shard_size: must be >= 1, got 0"),
    ("export.shard_size=-5", "export.shard_size: must be >= 1, got -5"),
    (f"export.shard_size={'9' * 400}GB", f"export.shard_size: '{'9' * 400}GB' is too large to be a size"),
    ("export.onnx.opset=17", "export.onnx.opset: must be >= 18, got 17"),
    ("export.onnx.opset=24", "export.onnx.opset: must be <= 23, got 24"),
    ("export.onnx.atol=0", "export.onnx.atol: must be > 0, got 0"),
    ("export.onnx.verify=perhaps", "export.onnx.verify: must be true or false, got 'perhaps'"),
    ("card.tags=mine", "card.tags: must be a list, got 'mine'"),
    ("card.license=[mit]", "card.license: must be text, got [\"mit\"]"),
    # numbers beyond reason (issue 7.10): bounds from what torch and machines hold
    ("seed=18446744073709551616", "seed: must be <= 4294967295, got 18446744073709551616"),
    ("model.in_channels=1e20", "model.in_channels: must be <= 1024, got 100000000000000000000"),
    ("model.head={num_classes: 1e9}", "model.head.num_classes: must be <= 1000000, got 1000000000"),
    ("model.head={num_classes: 2, type: mlp, hidden: [1e6]}", "model.head.hidden.0: must be <= 65536, got 1000000"),
    ("optimizer.lr=1e100", "optimizer.lr: must be <= 100, got 1e+100"),
    ("optimizer.lr_decay=1e100", "optimizer.lr_decay: must be <= 100, got 1e+100"),
    ("optimizer.weight_decay=1e3", "optimizer.weight_decay: must be <= 10, got 1000.0"),
    ("optimizer.group_lr={a: 1e9}", "optimizer.group_lr.a: must be <= 100, got 1000000000.0"),
    ("optimizer.scheduler={name: onecycle, div_factor: 1e300}", "optimizer.scheduler.div_factor: must be <= 1000000, got 1e+300"),
    ("optimizer.scheduler={name: step, step_epochs: 1e12}", "optimizer.scheduler.step_epochs: must be <= 10000, got 1000000000000"),
    ("data.batch_size=1e20", "data.batch_size: must be <= 65536, got 100000000000000000000"),
    ("data.image_size=1e5", "data.image_size: must be <= 4096, got 100000"),
    ("data.num_workers=1e5", "data.num_workers: must be <= 256, got 100000"),
    ("data.per_class=1e12", "data.per_class: must be <= 1000000000, got 1000000000000"),
    ("data={batch_size: 4096, image_size: 4096}",
     "data.batch_size: one input batch alone would take 768 GiB (batch_size 4096 x 3 channels x 4096x4096 x 4 bytes; "
     "at most 64 GiB); lower data.batch_size or data.image_size"),
    ("train.epochs=1e12", "train.epochs: must be <= 10000, got 1000000000000"),
    ("train.accumulate=1e20", "train.accumulate: must be <= 65536, got 100000000000000000000"),
    ("train.keep_last=1e9", "train.keep_last: must be <= 10000, got 1000000000"),
    ("train.checkpoint_every=1e9", "train.checkpoint_every: must be <= 10000, got 1000000000"),
    ("train.grad_clip=1e300", "train.grad_clip: must be <= 1000000, got 1e+300"),
    ("freeze.unfreeze={1e12: [a]}", "freeze.unfreeze.1000000000000: key must be < 10000, got 1000000000000"),
    ("freeze.unfreeze={'3.0': [a]}", "freeze.unfreeze.3.0: key must be a whole number, got '3.0'"),
    ("freeze.gradual={every: 1e9}", "freeze.gradual.every: must be <= 10000, got 1000000000"),
    ("export.onnx.atol=1e10", "export.onnx.atol: must be <= 1, got 10000000000.0"),
    ("export.shard_size=1e20", "export.shard_size: must be <= 1000000000000, got 1e+20"),
    (f"name={'n' * 201}", f"name: string should have at most 200 characters, got '{'n' * 56}..."),
    ("name=a/b", "name: must start with a letter or digit and hold only letters, digits, '.', '_' and '-', got 'a/b'"),
    ("name=..", "name: must start with a letter or digit and hold only letters, digits, '.', '_' and '-', got '..'"),
    # booleans are not numbers (issue 7.11), nor is text; YAML 1.2 (issue 23) reads on/off/yes/no as text
    ("train.epochs=true", "train.epochs: must be a whole number, got true"),
    ("train.epochs=on", "train.epochs: must be a whole number, got 'on'"),
    ("model.head={num_classes: true}", "model.head.num_classes: must be a whole number, got true"),
    ("model.head={num_classes: 2, type: mlp, hidden: [true]}", "model.head.hidden.0: must be a whole number, got true"),
    ("optimizer.lr=true", "optimizer.lr: must be a number, got true"),
    ("optimizer.betas=[true, 0.9]", "optimizer.betas.0: must be a number, got true"),
    ("optimizer.group_lr={a: false}", "optimizer.group_lr.a: must be a number, got false"),
    ("optimizer.scheduler={name: cosine, warmup_epochs: true}",
     "optimizer.scheduler.warmup_epochs: must be a number, got true"),
    ("train.grad_clip=true", "train.grad_clip: must be a number, got true"),
    ("export.shard_size=true", "export.shard_size: must be a whole number, got true"),
    ("seed=no", "seed: must be a whole number, got 'no'"),
    ("train.channels_last=yes", "train.channels_last: must be true or false, got 'yes'"),
    ("train.channels_last=1", "train.channels_last: must be true or false, got 1"),
    ("train.compile=on", "train.compile: must be true, false or a mode (default, reduce-overhead, max-autotune), got 'on'"),
    ("log.mlflow=yes", "log.mlflow: must be true, false or a mapping (tracking_uri, experiment), got 'yes'"),
    ("train.feature_cache=false", "train.feature_cache: must be one of auto, off, got false"),
    # a number in quotes is text (issue 23): JSON Schema, and so every editor, says so too
    ("optimizer.lr='3e-4'", "optimizer.lr: must be a number, got '3e-4' (text, not a number: write it without quotes)"),
    ("train.epochs='10'", "train.epochs: must be a whole number, got '10' (text, not a number: write it without quotes)"),
    ("data.image_size='224'",
     "data.image_size: must be a whole number or from_weights, got '224' (text, not a number: write it without quotes)"),
    ("loss.class_weights={a: '2'}",
     "loss.class_weights.a: must be a number, got '2' (text, not a number: write it without quotes)"),
    # YAML 1.1 numbers are text in YAML 1.2: what to write instead
    ("train.epochs=1:30", "train.epochs: must be a whole number, got '1:30' (YAML 1.2 has no base-60 numbers: write 90)"),
    ("train.epochs=1_000", "train.epochs: must be a whole number, got '1_000' (YAML 1.2 numbers have no '_': write 1000)"),
    ("train.epochs=2.5", "train.epochs: must be a whole number, got 2.5"),
    ("train.epochs=1.25e1", "train.epochs: must be a whole number, got 12.5"),
]

ACCEPTED: list[tuple[str, str, object]] = [
    ("model.head={num_classes: 1, dropout: 0}", "model.head.dropout", 0.0),
    ("model.head={num_classes: 2, at: classifier.-1}", "model.head.at", "classifier.-1"),
    ("model.head={num_classes: 2, type: mlp}", "model.head.hidden", None),
    ("model.arch=mypackage.nets:make_net", "model.arch", "mypackage.nets:make_net"),
    ("model.weights=DEFAULT", "model.weights", "DEFAULT"),
    ("device=cuda:12", "device", "cuda:12"),
    ("device=mps", "device", "mps"),
    ("name=0.run_1-b", "name", "0.run_1-b"),
    ("optimizer.lr_decay=1", "optimizer.lr_decay", 1.0),
    ("optimizer.momentum=0", "optimizer.momentum", 0.0),
    ("optimizer.no_weight_decay=[bias, norm, pos_embed]", "optimizer.no_weight_decay", ["bias", "norm", "pos_embed"]),
    ("optimizer.betas=[0, 0.999]", "optimizer.betas", (0.0, 0.999)),
    ("optimizer.scheduler={name: cosine, min_factor: 1}", "optimizer.scheduler.min_factor", 1.0),
    ("optimizer.scheduler={name: step, step_epochs: 1, gamma: 1}", "optimizer.scheduler.gamma", 1.0),
    ("optimizer.scheduler={name: cosine, warmup_epochs: 0.5}", "optimizer.scheduler.warmup_epochs", 0.5),
    ("freeze={trainable: [b], unfreeze: {0: [a]}, gradual: {start: 0}}", "freeze.unfreeze", {0: ["a"]}),
    ("freeze.unfreeze={'1': [a]}", "freeze.unfreeze", {1: ["a"]}),
    ("freeze.trainable=null", "freeze.trainable", None),
    ("data.val_fraction=0", "data.val_fraction", 0.0),
    ("data.image_size=8", "data.image_size", 8),
    ("data={dataset: cifar10, root: /data/cifar}", "data.root", "/data/cifar"),
    ("export.onnx.opset=18", "export.onnx.opset", 18),
    ("export.onnx.opset=23", "export.onnx.opset", 23),
    ("export.shard_size=512MiB", "export.shard_size", 512 * 2**20),
    ("export.shard_size=1", "export.shard_size", 1),
    ("export.shard_size=1.5 kb", "export.shard_size", 1500),
    ("source={recipe: /up/stream.yaml, adapt: [{match: x, rule: class_subset, indices: [0, 2]}]}",
     "source.recipe", "/up/stream.yaml"),
    ("source={checkpoint: /w.pt, allow_globals: [argparse.Namespace]}", "source.allow_globals", ["argparse.Namespace"]),
    # a whole number written as a float is that number; the bounds themselves are accepted
    ("train.epochs=1e3", "train.epochs", 1000),
    ("train.epochs=2.0", "train.epochs", 2),
    ("train.epochs=10000", "train.epochs", 10000),
    ("seed=4294967295", "seed", 2**32 - 1),
    ("model.head={num_classes: 1e6}", "model.head.num_classes", 1_000_000),
    ("model.in_channels=1024", "model.in_channels", 1024),
    ("optimizer.lr=3e-4", "optimizer.lr", 3e-4),
    ("optimizer.lr=1", "optimizer.lr", 1.0),
    ("data.image_size=4096", "data.image_size", 4096),
    ("data={batch_size: 256, image_size: 4096}", "data.batch_size", 256),
    (f"name={'n' * 200}", "name", "n" * 200),
    # YAML 1.2 (issue 23): what an editor reads, recipec reads
    ("train.epochs=010", "train.epochs", 10),
    ("train.epochs=0o10", "train.epochs", 8),
    ("train.epochs=0x10", "train.epochs", 16),
    ("name=2024-01-01", "name", "2024-01-01"),
    ("card.tags=[yes, no, on, off, 1_000]", "card.tags", ["yes", "no", "on", "off", "1_000"]),
    ("train.feature_cache=off", "train.feature_cache", "off"),
    ("export.weights=best", "export.weights", "model"),
    ("log.mlflow=true", "log.mlflow.experiment", None),
    # keys: editors read every key as text, and so does a mapping with text keys
    ("model.kwargs={1: 2}", "model.kwargs", {"1": 2}),
    ("loss.class_weights={3: 2}", "loss.class_weights", {"3": 2.0}),
    ("freeze.unfreeze={0o1: [a]}", "freeze.unfreeze", {1: ["a"]}),
]


@pytest.fixture()
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    Path("spec.yaml").write_text("name: spec\nmodel: {arch: resnet18}\ntrain: {epochs: 2}\nfreeze: {trainable: [b]}\n"
                                 "groups: [{name: a, match: ['^a']}, {name: b, match: ['^b']}]\n")
    return "spec.yaml"


@pytest.mark.parametrize("override, problem", REFUSED, ids=[o[:60] for o, _ in REFUSED])
def test_refused(base: str, override: str, problem: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(base, [override])
    assert info.value.problems == [f"--set {override}: {problem}"]


@pytest.mark.parametrize("override, dotted, value", ACCEPTED, ids=[o[:60] for o, _, _ in ACCEPTED])
def test_accepted(base: str, override: str, dotted: str, value: object) -> None:
    got: object = load_recipe(base, [override])
    for part in dotted.split("."):
        got = getattr(got, part)
    assert got == value


def test_a_field_problem_without_a_path_still_reads_well() -> None:
    with pytest.raises(ValueError, match="needs checkpoint"):
        Recipe.model_validate({"name": "x", "model": {"arch": "a"}, "source": {}})


@pytest.mark.parametrize("text, size", [
    ("2GB", 2 * 10**9), ("500MB", 500 * 10**6), ("512MiB", 512 * 2**20), ("1GiB", 2**30), ("1.5KB", 1500),
    ("1000", 1000), (" 3 tb ", 3 * 10**12), ("7B", 7), (42, 42),
])
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["2XB", "GB", "-1GB", "1e3", "", "two"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def test_defaults_are_valid() -> None:
    recipe = Recipe.model_validate({"name": "x", "model": {"arch": "resnet18"}})
    assert recipe.optimizer.scheduler.name == "none"
    assert recipe.export.formats == ["safetensors"]
    assert recipe.freeze.unfreeze == {}


def test_recipe_is_frozen() -> None:
    recipe = Recipe.model_validate({"name": "x", "model": {"arch": "resnet18"}})
    with pytest.raises(ValueError):
        recipe.name = "y"  # type: ignore[misc]
