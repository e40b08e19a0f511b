// The optimiser's public surface: AdamW with BLIP-2's parameter groups and LAVIS's learning-rate schedule.
export * from './adamw';
export * from './param-groups';
export * from './schedule';
