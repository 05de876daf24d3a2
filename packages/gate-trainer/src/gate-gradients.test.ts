// The trainer's ∂loss/∂α on the CPU against finite differences of the float64 loss.
import { createBackend } from '@duoattn/kernels';
import { gateGradientSuite } from './gradient-check.js';

const cpu = createBackend('cpu');
gateGradientSuite('cpu', () => cpu);
