"""The engine: one training loop over members, its back-ends, the paper's recipe and the data.

    from analysis.engine.train import train, train_group
    train(cfg, "runs/c")              # one run into its run directory
    train_group([cfg_a, cfg_b], outs) # K compatible runs at once (stacked)

train: the loop (Trainer); member: one run directory's model, optimizer, schedule, EMA, data order and
records; backends: how a step's losses and gradients are computed (one model, DDP, or K stacked runs);
schedule: warmup then cosine, and where a run stands in it; optim: optimizers; precision: device and
bf16/autocast; evaluate: test error; model: a run config's model; seed: global seeding; data:
datasets and a run's batch sources.
"""
