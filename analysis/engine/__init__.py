"""The engine: one training loop over members, its back-ends, the paper's recipe and the data.

    from analysis.engine.train import train, train_group
    train(cfg, "runs/c")              # one run into its run directory
    train_group([cfg_a, cfg_b], outs) # K compatible runs at once (stacked)

train: the loop (Trainer); member: one run directory's model, optimizer, EMA, data order and records;
backends: how a step's losses and gradients are computed (one model, DDP, or K stacked runs);
recipe: device, precision, loaders, evaluation, schedule and optimizers; data: datasets in memory.
"""
