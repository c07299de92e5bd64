export * from './registry.js';
export { zImageTurbo, zImageTurboLora } from './z-image.js';
