"""How the numbers change: freezing schedule, optimizer and learning-rate schedule."""

from recipec.train.freezing import FreezeSchedule, apply_trainable, compile_schedule, set_train_mode
from recipec.train.optim import build_optimizer, build_param_groups, group_learning_rates
from recipec.train.schedule import LrShape, build_scheduler, lr_factor, lr_table

__all__ = [
    "FreezeSchedule",
    "LrShape",
    "apply_trainable",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "compile_schedule",
    "group_learning_rates",
    "lr_factor",
    "lr_table",
    "set_train_mode",
]
