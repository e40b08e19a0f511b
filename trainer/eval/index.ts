/**
 * trainer/eval: scoring a model's output as BLIP-2's evaluation does it, pure functions over text and numbers (no
 * model, no engine): COCO caption scores (PTB tokenisation, corpus BLEU-1..4, CIDEr-D) from COCO results and
 * captions files, VQAv2 accuracy with the official answer normalisation, and image-text retrieval recall with the
 * ITM re-ranking step over a caller's scorer. The `blip2 eval` command reads files through it.
 */
export { cocoTokenize, ptbTokens, PTB_PUNCTUATIONS } from './ptb-tokenize';
export { corpusBleu, ngramCounts, type BleuResult } from './bleu';
export { ciderD, type CiderResult } from './cider';
export {
  scoreCaptionFiles, scoreCaptions, pairCaptions, parseCocoCaptions, parseCocoResults,
  type CaptionScores, type CaptionSet, type ImageId,
} from './caption-eval';
export { scoreVqaFiles, type VqaScores } from './vqa-eval';
export { vqaAccuracy, vqaOverall, normalizeVqaAnswer, processPunctuation, processDigitArticle } from './vqa';
export { retrievalMetrics, retrievalChance, recallChance, rerankTopK, topK, type RetrievalMetrics, type PairScorer, type Matrix } from './retrieval';
