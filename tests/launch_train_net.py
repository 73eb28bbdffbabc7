#!/usr/bin/env python
"""Test helper: tools/train_net.py's ``main`` for several command lines, one after the other, in one launch of
Detectron2's launcher (the processes start, import and join their process group once for all runs).

    python tests/launch_train_net.py --num-gpus 2 --dist-url tcp://127.0.0.1:PORT RUNS.json

RUNS.json: a list of train_net.py argument lists (``--config-file ...``, flags, ``KEY VALUE`` overrides); each is
parsed by train_net.py's own parser and run by its ``main``, exactly as ``train_net.py --num-gpus N <args>`` would.
"""
import importlib.util
import json
import os
import sys

from detectron2.engine import default_argument_parser, launch

_spec = importlib.util.spec_from_file_location(
    "train_net", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "train_net.py")
)
train_net = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_net)


def run_all(runs):
    for argv in runs:
        train_net.main(default_argument_parser().parse_args(argv))


if __name__ == "__main__":
    args = default_argument_parser().parse_args(sys.argv[1:-1])
    with open(sys.argv[-1]) as f:
        runs = json.load(f)
    launch(run_all, args.num_gpus, num_machines=1, machine_rank=0, dist_url=args.dist_url, args=(runs,))
