"""A plugin distribution for lvm-zoo, as a separate package would ship it: a model family
(``family``), a guide for the built-in GMM (``guide``) and a strategy (``strategy``), each a
module named under an entry point group in ``../lvm_zoo_toy_plugin-0.1.dist-info``. Nothing in
lvm-zoo names any of them."""

MOMENTS = "toy plugin: maximum likelihood from the data's first two moments"
# ^ the capability the plugin's strategy asks for and its model offers
