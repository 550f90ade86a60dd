"""The distiller: expert trajectories, trajectory matching + MMD, budget fitting, packing."""
