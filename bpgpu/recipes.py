"""Named training recipes: ``bpgpu train --recipe best`` per dataset, in one table.

A recipe is a set of ``bpgpu train`` options chosen by measurement (bench/results/recipe-*.txt
holds the runs, README "Recipes" what they reach); options given on the command line override
the recipe's. The keys are the ``train`` options' names (argparse destinations).
"""

from __future__ import annotations

__all__ = ["RECIPES", "recipe_for"]

#: recipe name -> dataset name -> ``bpgpu train`` options
RECIPES = {
    "best": {
        # plain MLP: 99.33 % MNIST test accuracy in 7.5 minutes on a 2-core CPU (bench/NOTES.md)
        "mnist": dict(hidden=[1024, 1024], activation="relu", init="he", optimizer="momentum",
                      lr=0.05, momentum=0.9, batch_size=128, dropout=0.2, epochs=60,
                      augment="shift=2", schedule="cosine:warmup=1"),
        # 90.91 % in 6.6 minutes; shifts and mirrors lower it (aligned, centred items)
        "fashion-mnist": dict(hidden=[1024, 1024], activation="relu", init="he",
                              optimizer="momentum", lr=0.05, momentum=0.9, batch_size=128,
                              dropout=0.2, epochs=60, schedule="cosine:warmup=1"),
    },
}


def recipe_for(name: str, dataset: str) -> dict:
    """The options of recipe ``name`` for ``dataset``.

    Raises
    ------
    KeyError
        With a one-line message naming what exists.
    """
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    per_dataset = RECIPES[name]
    key = str(dataset).lower().replace("_", "-")
    key = "fashion-mnist" if key == "fashion" else key
    if key not in per_dataset:
        raise KeyError(f"recipe {name!r} has settings for {', '.join(per_dataset)}, not for "
                       f"dataset {dataset!r}")
    return dict(per_dataset[key])
