"""The pretrain stage (``polyvox pretrain`` → ``models/base``): the base every voice fine-tunes from.
It composes the other stages (the base corpus's data half runs them through
:data:`polyvox.stages.STAGES`, as the flow does) and the trainer, so it has its own home above them."""
