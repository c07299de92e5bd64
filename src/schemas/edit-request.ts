/**
 * Request bodies of `POST /v1/images/edits` (and of a generation that names
 * an input image), one schema per model family: the model's generation
 * fields with `image_size` taking `auto` (the input's size, fal's default for
 * its image-to-image and inpaint endpoints), plus the input image, the mask
 * and the strength. Multipart bodies carry the image and mask as files
 * instead of `image_url` / `mask_url`; their other fields are these.
 */
import type { FromSchema } from 'json-schema-to-ts';
import { customImageSizeField, falImageFields, IMAGE_SIZE_PRESETS, INPUT_URL_PATTERN, lorasField } from './fields.js';
import { imageRequestSchema } from './request-builder.js';

const inputUrlField = (what: string) =>
  ({
    type: 'string',
    maxLength: 4096,
    pattern: INPUT_URL_PATTERN,
    description: `${what}: an https URL on a public address (or a host in EDIT_IMAGE_HOSTS_ALLOWED), fetched by fal.`,
  }) as const;

/** `image_size` of an edit: a preset, {width, height}, or `auto`, the input's own size (the default). */
export const editImageSizeField = {
  description:
    'A preset name, {width, height} in pixels (each an integer from 512 to 2048, a multiple of 32), or "auto": the size of the input image. Default "auto".',
  anyOf: [{ type: 'string', enum: [...IMAGE_SIZE_PRESETS, 'auto'] }, customImageSizeField],
} as const;

const zImageTurboEditFields = {
  ...falImageFields,
  image_size: editImageSizeField,
  image_url: inputUrlField('The image to edit (JSON bodies; a multipart body sends it as the file `image`)'),
  mask_url: inputUrlField("A mask of the image's size (JSON bodies; a multipart body sends it as the file `mask`), white where the image is repainted"),
  strength: {
    type: 'number',
    minimum: 0,
    maximum: 1,
    description: "How far the result may move from the input, 0 to 1. fal's defaults: 0.6 for image-to-image, 1 for inpainting.",
  },
} as const;

export const zImageTurboEditRequestSchema = imageRequestSchema({
  title: 'Z-Image Turbo image edit request',
  description:
    'Body of POST /v1/images/edits for alibaba/z-image-turbo (fal-ai/z-image/turbo/image-to-image; with a mask, fal-ai/z-image/turbo/inpaint). Unknown fields are refused.',
  fields: zImageTurboEditFields,
});

export const zImageTurboLoraEditRequestSchema = imageRequestSchema({
  title: 'Z-Image Turbo LoRA image edit request',
  description:
    'Body of POST /v1/images/edits for alibaba/z-image-turbo-lora (fal-ai/z-image/turbo/image-to-image/lora; with a mask, fal-ai/z-image/turbo/inpaint/lora): the Z-Image Turbo edit fields plus up to 3 LoRAs.',
  fields: { ...zImageTurboEditFields, loras: lorasField },
});

export type EditRequestFields = FromSchema<typeof zImageTurboLoraEditRequestSchema>;
