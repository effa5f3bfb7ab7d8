"""The built-in demo: a synthetic corpus (sound events, keywords, speakers) and ``ssast-demo``,
which pretrains, finetunes and reports on it. Nothing else in ssast imports this package."""
