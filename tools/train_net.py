#!/usr/bin/env python
"""Train or evaluate a VLT model (VLTSeg, Rein, FAMix, VLTDet) with Detectron2's launcher.

    python tools/train_net.py --config-file configs/vltseg_gta.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/vltseg_cityscapes.yaml --eval-only MODEL.WEIGHTS model.pth
    python tools/train_net.py --config-file configs/vltseg_cityscapes.yaml --resume     # after a kill

A user error (missing data, bad config value, unusable checkpoint, unwritable output) ends the run with its message as
the last line and exit status 1; the traceback goes to OUTPUT_DIR/log.txt (VLT_DEBUG=1 prints it here too).
"""
import vlt  # noqa: F401, I001  (first: its warnings filter must be in place before Detectron2 imports fvcore)
import logging
import sys

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from vlt.engine import Trainer, VLTCheckpointer
from vlt.engine.checkpoint import build_model_for_evaluation
from vlt.utils.config import load_config
from vlt.utils.errors import LogErrors, quiet_console_tracebacks, run_tool


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    # default_setup only logs "detectron2" and "fvcore": without this, VLT's own lines (parameter report,
    # multi-target table, submission summary, AMP fallback) reach neither the console nor log.txt.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vlt", abbrev_name="vlt")
    quiet_console_tracebacks()  # user errors: the traceback goes to log.txt, the message is printed last
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        if args.resume:  # the last checkpoint of OUTPUT_DIR (else MODEL.WEIGHTS)
            model = Trainer.build_model(cfg)
            checkpointer = VLTCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict_eval=True)
            checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=True)
        else:
            if not cfg.MODEL.WEIGHTS:
                logging.getLogger("vlt").warning("--eval-only without MODEL.WEIGHTS: evaluating untrained weights")
            # Every evaluated parameter must come from MODEL.WEIGHTS (the tower may come from OPEN_CLIP.PRETRAINED).
            model = build_model_for_evaluation(cfg, Trainer.build_model)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    sys.exit(run_tool(
        launch, LogErrors(main), args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
        dist_url=args.dist_url, args=(args,),
    ))
