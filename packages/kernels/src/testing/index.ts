// Test helpers shared by packages: float64 reference ops, dtype bit conversions, error measures.
export * from './backward.js';
export * from './reference.js';
export * from './shared-data.js';
