/**
 * trainer/generate: text generation from a trained model: greedy and beam search as Hugging Face `generate` runs
 * them for LAVIS (minimum and maximum length, repetition and length penalty, an end token), over decoders that keep
 * a key/value cache so each new token costs one position: the stage-2 OPT decoder (`CachedOptDecoder`) and the
 * stage-1 Q-Former ITG head (`CachedItgDecoder`).
 */
export { greedySearch, beamSearch, sequenceScore, type StepDecoder, type GenerationOptions, type Generated } from './search';
export { CachedItgDecoder } from './itg-decoder';
export { CachedOptDecoder, leftPaddedPrompt, type PromptTokens } from './opt-decoder';
export { optSoftPrompt, generateWithOpt, generateWithItg, type SearchOptions } from './captions';
