"""Betty problems and engine: the PRM as the lower problem, reweighting modules as the upper one."""
