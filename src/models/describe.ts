import type { ModelEntry } from './registry.js';
import type { ModelObject } from '../schemas/models.js';
import { IMAGE_SIZE_PRESET_PIXELS } from '../schemas/fields.js';
import { formatDecimal, type Markup } from '../metering/money.js';
import { capabilitiesOf } from './edits.js';

/**
 * A registry entry as `GET /v1/models` shows it. Limits are read from the
 * model's own request schema, so what we advertise is what we enforce.
 */

type SchemaNode = { [k: string]: unknown };

function prop(schema: SchemaNode | undefined, name: string): SchemaNode | undefined {
  return (schema?.properties as Record<string, SchemaNode> | undefined)?.[name];
}

function customSize(imageSize: SchemaNode | undefined): SchemaNode | undefined {
  const variants = (imageSize?.anyOf ?? imageSize?.oneOf) as SchemaNode[] | undefined;
  return variants?.find((v) => v.type === 'object');
}

export function describeModel(entry: ModelEntry, markup: Markup): ModelObject {
  const schema = entry.requestSchema as unknown as SchemaNode;
  const width = prop(customSize(prop(schema, 'image_size')), 'width');
  const n = prop(schema, 'n');
  const steps = prop(schema, 'num_inference_steps');
  const presets = Object.fromEntries(Object.entries(IMAGE_SIZE_PRESET_PIXELS).map(([k, v]) => [k, `${v.width}x${v.height}`]));
  const p = entry.pricing;
  return {
    id: entry.id,
    object: 'model',
    created: entry.created,
    owned_by: entry.ownedBy,
    type: 'openai/image-generations',
    description: entry.description,
    aliases: [...entry.aliases],
    endpoint: entry.endpoint,
    capabilities: capabilitiesOf(entry),
    ...(entry.edits
      ? {
          edit_endpoints: {
            image_to_image: { endpoint: entry.edits.imageToImage.endpoint, usd_per_unit: entry.edits.imageToImage.pricing.rateUsd },
            ...(entry.edits.inpaint ? { inpaint: { endpoint: entry.edits.inpaint.endpoint, usd_per_unit: entry.edits.inpaint.pricing.rateUsd } } : {}),
          },
        }
      : {}),
    limits: {
      max_images_per_request: typeof n?.maximum === 'number' ? n.maximum : entry.maxImagesPerJob,
      max_images_per_job: entry.maxImagesPerJob,
      prompt_max_length: (prop(schema, 'prompt')?.maxLength as number | undefined) ?? 0,
      image_size_presets: presets,
      ...(typeof width?.minimum === 'number' ? { min_side: width.minimum } : {}),
      ...(typeof width?.maximum === 'number' ? { max_side: width.maximum } : {}),
      ...(typeof width?.multipleOf === 'number' ? { side_multiple_of: width.multipleOf } : {}),
      max_loras: (prop(schema, 'loras')?.maxItems as number | undefined) ?? 0,
      ...(typeof steps?.minimum === 'number' ? { min_inference_steps: steps.minimum } : {}),
      ...(typeof steps?.maximum === 'number' ? { max_inference_steps: steps.maximum } : {}),
    },
    pricing: {
      unit: p.unit,
      usd_per_unit: p.rateUsd,
      ...(p.unit === 'megapixel' ? { megapixel_pixels: p.megapixelPixels, rounding: p.rounding } : {}),
      ...(p.promptExpansionUsd ? { prompt_expansion_usd: p.promptExpansionUsd } : {}),
      caller_markup: formatDecimal(markup),
    },
  };
}
