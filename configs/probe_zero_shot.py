"""The probe's zero-shot cells re-measured at study size: `python -m launch.probe
--config=configs/probe_zero_shot.py`.

With no worked example (bare answers, 0 shots) the probe's small sweep found the uniform mixture
beating both members on one-digit sums (docs/probe.md), the setting where weights changed the reward
most often. Leads measured on a few dozen problems did not hold on the study's test split, so here
every family is screened on 200 validation problems and the most promising ones are confirmed on
200 more before the selection rule reads them (results: docs/probe.md, "Zero-shot cells").
"""

from configs.probe import finalize
from configs.probe import get_config as probe_config

__all__ = ["finalize", "get_config"]

ONE_DIGIT = '"max_digits": 1, "max_terms": 2, "min_digits": 1, "min_terms": 2, "train_size": 40'


def get_config():
    config = probe_config()
    config.output_dir = "outputs/probe_zero_shot"
    config.families = (  # the probe's families where a member or the mixture beat the constant
        'rg/basic_arithmetic:{"allow_negation": false, "allow_parentheses": false, '
        f'"operators": ["+"], {ONE_DIGIT}}}',
        f"rg/chain_sum:{{{ONE_DIGIT}}}",
        f"rg/products:{{{ONE_DIGIT}}}",
        "rg/gcd:easy",
        'rg/lcm:{"max_value": 40, "train_size": 300}',
        "rg/letter_counting:easy",
    )
    config.screen_settings = (("bare", 0),)
    config.sweep_settings = ()
    config.screen_problems = 200
    config.confirm_problems = 200
    config.confirm_families = 4
    config.batch_size = 40
    return config
