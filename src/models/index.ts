export * from './registry.js';
export * from './prices.js';
export { zImageBase, zImageBaseLora, zImageTurbo, zImageTurboLora } from './z-image.js';
export { flux2Lora, fluxDev, fluxSchnell } from './flux.js';
