"""The pure maths of the recipes: tensor functions (and the small modules they need) with no config, no I/O."""
